"""Data preparation (``nodulesam-train prepare voi|dicom``) and the patient-grouped split.

Real LIDC data (``../shared/data/lidc`` or ``$NODULESAM_LIDC_DIR``); data tests skip without it.
The DICOM test points pylidc at the shared scans through a temporary config; the user's
``~/.pylidcrc`` is neither read nor written (checked).
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from lidc_data import LIDC_DIR, needs_scans, needs_voi


def _nifti(path):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_malignancy_class_rule():
    from nodulesam_train.lidc import malignancy_class

    assert malignancy_class([5, 5, 4, 5]) == (2, "malignant")
    assert malignancy_class([1, 2, 3]) == (1, "benign")
    assert malignancy_class([3, 3, 4]) == (0, "indeterminate")
    assert malignancy_class([1, 2, 4, 5]) == (0, "none")
    assert malignancy_class([4, 4, 3, 1]) == (0, "none")  # 2 of 4 is not more than half
    assert malignancy_class([4, 4, 4, 3, 1]) == (2, "malignant")


def _check_split(pids, classes, splits, tolerance):
    by_patient = {}
    for p, s in zip(pids, splits):
        by_patient.setdefault(p, set()).add(s)
    assert all(len(v) == 1 for v in by_patient.values()), "a patient is in two splits"
    share = {"train": 1902 / 2642, "val": 265 / 2642, "test": 475 / 2642}
    for name, target in share.items():
        n = sum(s == name for s in splits)
        assert abs(n / len(splits) - target) < tolerance, (name, n)
        for cls in set(classes):
            total = sum(c == cls for c in classes)
            got = sum(c == cls and s == name for c, s in zip(classes, splits))
            assert abs(got / total - target) < tolerance, (name, cls, got, total)


def test_split_synthetic_is_grouped_and_stratified():
    from nodulesam_train.split import stratified_group_split

    rng = np.random.default_rng(1)
    pids, classes = [], []
    for p in range(600):
        for _ in range(int(rng.integers(1, 5))):
            pids.append(f"P{p:04d}")
            classes.append(int(rng.choice(3, p=[0.55, 0.2, 0.25])))
    splits = stratified_group_split(pids, classes)
    _check_split(pids, classes, splits, tolerance=0.02)
    assert splits == stratified_group_split(pids, classes)  # seeded
    assert splits != stratified_group_split(pids, classes, seed=7)


@needs_voi
def test_split_reproduces_the_voi_split():
    """The README's procedure, seed 20240532, gives exactly the shared VOI split."""
    from nodulesam_train.split import split_table, stratified_group_split

    rows = _read_csv(LIDC_DIR / "voi" / "cases.csv")
    pids = [r["patient_id"] for r in rows]
    classes = [int(r["malignancy_class3"]) for r in rows]
    splits = stratified_group_split(pids, classes)
    assert splits == [r["split"] for r in rows]
    _check_split(pids, classes, splits, tolerance=0.03)
    table = {r["split"]: r for r in split_table(pids, classes, splits)}
    assert (table["train"]["patients"], table["val"]["patients"], table["test"]["patients"]) == (318, 44, 79)
    assert (table["test"]["class_0"], table["test"]["class_1"], table["test"]["class_2"]) == (80, 30, 33)


@needs_voi
def test_prepare_voi_matches_consensus50(tmp_path):
    from nodulesam_train.cli import main
    from nodulesam_train.lidc import WINDOW_HU, load_case

    out = tmp_path / "voi"
    assert main(["prepare", "voi", "--voi-dir", str(LIDC_DIR / "voi"), "--out", str(out), "--limit", "6"]) == 0
    rows = _read_csv(out / "cases.csv")
    src = {r["case_id"]: r for r in _read_csv(LIDC_DIR / "voi" / "cases.csv")}
    assert len(rows) == 6 and rows[0]["case_id"] == "LIDC-IDRI-0001_N1"
    for row in rows:
        ref = src[row["case_id"]]
        case = load_case(out / row["file"])
        folder = LIDC_DIR / "voi" / row["case_id"]
        consensus = _nifti(folder / "consensus50.nii.gz") > 0
        present = np.flatnonzero(consensus.any(axis=(1, 2)))
        k = case["k"]
        assert present[0] <= k <= present[-1] and abs(k - (present[0] + present[-1]) / 2) <= 1
        assert np.array_equal(case["consensus"] > 0, consensus[k])
        assert np.array_equal(case["hu"], _nifti(folder / "image.nii.gz")[k])
        readers = case["readers"] > 0
        assert readers.shape[0] == int(ref["n_readers"])
        assert np.array_equal(readers.mean(axis=0) >= 0.5, case["consensus"] > 0)
        lo, hi = WINDOW_HU
        assert np.allclose(case["image01"], np.clip((case["hu"] - lo) / (hi - lo), 0, 1))
        assert 0.0 <= case["image01"].min() and case["image01"].max() <= 1.0
        assert row["split"] == ref["split"] and case["split"] == ref["split"]
        assert int(row["malignancy_class3"]) == int(ref["malignancy_class3"]) == case["class3"]
        assert row["malignancy_majority"] == ref["malignancy_majority"]
        assert row["malignancy_ratings"] == ref["malignancy_ratings"]
        assert np.allclose(case["spacing"], [float(ref["spacing_y"]), float(ref["spacing_x"])])


@needs_scans
def test_prepare_dicom_0001_matches_shared_consensus(tmp_path):
    from nodulesam_train.cli import main
    from nodulesam_train.lidc import load_case

    home = Path.home()
    rc_file = home / ".pylidcrc"
    before = rc_file.read_bytes() if rc_file.exists() else None
    out = tmp_path / "dicom"
    assert main(["prepare", "dicom", "--scans-dir", str(LIDC_DIR / "scans"), "--out", str(out),
                 "--patients", "LIDC-IDRI-0001"]) == 0
    assert Path.home() == home
    assert (rc_file.read_bytes() if rc_file.exists() else None) == before, "~/.pylidcrc was touched"

    rows = _read_csv(out / "cases.csv")
    assert [r["case_id"] for r in rows] == ["LIDC-IDRI-0001_N1"]
    case = load_case(out / rows[0]["file"])
    label = _nifti(LIDC_DIR / "scans" / "LIDC-IDRI-0001.consensus50.nii.gz")  # [k, j, i]
    k = case["k"]
    assert case["consensus"].shape == (512, 512) and case["consensus"].sum() > 500
    assert np.array_equal(case["consensus"] > 0, label[k] == 1)
    assert np.array_equal(case["consensus"] > 0, label[k] > 0)
    assert list(case["malignancy"]) == [5, 5, 5, 4] and case["class3"] == 2
    assert rows[0]["split"] in ("train", "val", "test")
    # the same nodule prepared from the VOI: identical HU, consensus and reader masks
    voi = {r["case_id"]: r for r in _read_csv(LIDC_DIR / "voi" / "cases.csv")}["LIDC-IDRI-0001_N1"]
    i0, j0, k0 = int(voi["scan_i0"]), int(voi["scan_j0"]), int(voi["scan_k0"])
    image = _nifti(LIDC_DIR / "voi" / "LIDC-IDRI-0001_N1" / "image.nii.gz")
    ny, nx = image.shape[1:]
    assert np.array_equal(case["hu"][j0:j0 + ny, i0:i0 + nx], image[k - k0])
    readers = _nifti(LIDC_DIR / "voi" / "LIDC-IDRI-0001_N1" / "readers.nii.gz")  # [r, k, j, i]
    assert np.array_equal(case["readers"][:, j0:j0 + ny, i0:i0 + nx] > 0, readers[:, k - k0] > 0)


@needs_scans
def test_prepare_dicom_split_from_csv_and_computed(tmp_path):
    from nodulesam_train.lidc import prepare_dicom

    cases = prepare_dicom(LIDC_DIR / "scans", tmp_path / "a", patients=["LIDC-IDRI-0003"],
                          split_csv=LIDC_DIR / "voi" / "cases.csv", progress=False)
    assert [c.case_id for c in cases] == [f"LIDC-IDRI-0003_N{n}" for n in range(1, 5)]
    assert {c.split for c in cases} == {"train"}
    assert Counter(len(c.readers) for c in cases) == Counter({4: 3, 1: 1})
    label = _nifti(LIDC_DIR / "scans" / "LIDC-IDRI-0003.consensus50.nii.gz")
    for c in cases:
        assert np.array_equal(c.consensus > 0, label[c.k] == c.cluster_index), c.case_id
