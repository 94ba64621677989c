"""Follow-up comparison (compare.py) on real scans under known transforms.

No real pair of one patient's CTs is in the shared data, so the follow-up is made: a real scan
against a rigidly moved, resampled copy of itself; a copy in which a real LIDC nodule was pasted
at a known scale; and a scan against another patient's. To stay fast, these tests use a slab of
slices around the nodules and the reference masks (the test is about registration, matching
and the change, not segmentation); the command-line tests segment with the real refiner.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from NoduleSAMLib import compare
from NoduleSAMLib.compare import Scan, findings_from_labelmap, moved_copy
from NoduleSAMLib.geometry import apply_matrix
from NoduleSAMLib.volume import CTVolume, read_ct

PRIOR_DATE, CURRENT_DATE = dt.date(2020, 1, 10), dt.date(2020, 7, 8)  # 180 days
# the patient's move in the follow-ups: degrees about LPS x, y, z and mm along them
ROTATION_DEG, TRANSLATION_MM = (2.0, -3.0, 4.0), (8.0, -6.0, 5.0)
MOVED_SPACING_MM = (0.8, 0.8, 2.0)  # the copy is resampled to other voxels too


def slab(volume: CTVolume, labels: np.ndarray | None, z_lps_mm: tuple[float, float]):
    """The slices of ``volume`` (and ``labels``) whose LPS z lies in ``z_lps_mm``, geometry kept."""
    z = volume.zyx_to_lps(np.column_stack([np.arange(volume.hu.shape[0]),
                                           np.zeros((volume.hu.shape[0], 2))]))[:, 2]
    keep = np.flatnonzero((z >= z_lps_mm[0]) & (z <= z_lps_mm[1]))
    k0, k1 = int(keep[0]), int(keep[-1]) + 1
    ijk_to_ras = volume.ijk_to_ras.copy()
    ijk_to_ras[:3, 3] = apply_matrix(volume.ijk_to_ras, [0, 0, k0])
    out = CTVolume(volume.hu[k0:k1].copy(), ijk_to_ras, volume.source)
    return out, None if labels is None else labels[k0:k1].copy()


def grid_points(volume: CTVolume, n: int = 5) -> np.ndarray:
    """An n x n x n grid of LPS points over the central 60 % of ``volume``."""
    axes = [np.linspace(0.2, 0.8, n) * (size - 1) for size in volume.hu.shape]
    zyx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return volume.zyx_to_lps(zyx)


def lps_z(volume: CTVolume, k: float) -> float:
    return float(np.ravel(volume.zyx_to_lps(np.array([k, 0.0, 0.0])))[2])


@pytest.fixture(scope="module")
def follow_up_0001(ct_0001, reference_0001):
    """LIDC-IDRI-0001 and its moved copy (whole scans moved, then the same slab of each)."""
    moved, moved_labels, truth = moved_copy(ct_0001, ROTATION_DEG, TRANSLATION_MM,
                                            reference_0001, MOVED_SPACING_MM)
    z_range = (lps_z(ct_0001, 70), lps_z(ct_0001, 110))  # nodule 1 lies on slices 86-93
    prior = slab(ct_0001, reference_0001, z_range)
    current = slab(moved, moved_labels, (z_range[0] + TRANSLATION_MM[2] - 10,
                                         z_range[1] + TRANSLATION_MM[2] + 10))
    return prior, current, truth


def test_moved_copy_keeps_the_anatomy(ct_0001, reference_0001):
    """The test's own instrument: the copy puts the nodule where the true transform says."""
    moved, labels, truth = moved_copy(ct_0001, ROTATION_DEG, TRANSLATION_MM, reference_0001,
                                      MOVED_SPACING_MM)
    assert np.allclose(moved.spacing_ijk_mm, MOVED_SPACING_MM)
    before = np.ravel(ct_0001.zyx_to_lps(np.argwhere(reference_0001 > 0).mean(axis=0)))
    after = np.ravel(moved.zyx_to_lps(np.argwhere(labels > 0).mean(axis=0)))
    assert np.linalg.norm(np.array(truth.TransformPoint(before.tolist())) - after) < 0.5


def test_scan_against_its_moved_copy_is_stable_and_one_to_one(follow_up_0001):
    (prior_ct, prior_labels), (current_ct, current_labels), truth = follow_up_0001
    prior = Scan(prior_ct, findings_from_labelmap(prior_ct, prior_labels), prior_labels, PRIOR_DATE)
    current = Scan(current_ct, findings_from_labelmap(current_ct, current_labels), current_labels,
                   CURRENT_DATE)
    registration = compare.register(prior_ct, current_ct)
    tre = compare.target_registration_error(registration, truth, grid_points(prior_ct))
    nodule_tre = compare.target_registration_error(registration, truth,
                                                   [prior.findings[0].centroid_lps_mm])
    print(f"TRE over a 5x5x5 grid: mean {tre.mean():.2f} mm, max {tre.max():.2f} mm; "
          f"at nodule 1: {nodule_tre[0]:.2f} mm")
    assert tre.max() < 1.0 and nodule_tre[0] < 1.0

    result = compare.compare(prior, current, registration)
    assert len(result["matches"]) == 1 and not result["new"] and not result["resolved"]
    match = result["matches"][0]
    print(f"volume change {match['volume_change_pct']:.2f} %, local similarity "
          f"{match['local_similarity']:.3f}, distance {match['distance_mm']:.2f} mm")
    assert match["trend"] == "stable" and match["vdt_days"] is None
    assert abs(match["volume_change_pct"]) < compare.STABLE_PCT
    assert match["lung_rads_growth"] is False
    assert match["local_similarity"] > 0.95 and match["distance_mm"] < 1.5
    assert result["interval_days"] == 180
    json.dumps(result)  # compare.json is plain JSON


def voi_case(lidc_dir, case_id: str) -> dict:
    with open(lidc_dir / "voi" / "cases.csv", newline="") as handle:
        return next(row for row in csv.DictReader(handle) if row["case_id"] == case_id)


def test_pasted_nodule_grows_by_its_known_scale(lidc_dir):
    """A real VOI nodule (LIDC-IDRI-0119_N1: 13.8 mm, solid, test split, 1 mm slices) pasted into
    LIDC-IDRI-0314 (1 mm slices) at scale 1 in the prior and at scale 2^(1/3) (twice the volume)
    at the same place in the current, which is also moved and resampled. The partial-volume
    error is measured on the pasted label maps: each pasted volume against the nodule's true
    volume at its scale (the VOI's consensus volume times scale cubed). The change that the
    comparison finds must be +100 % within that error, and the doubling time the interval."""
    import SimpleITK as sitk
    from nodulesam_train.paste import paste, paste_allowed, read_voi

    full = read_ct(lidc_dir / "scans" / "LIDC-IDRI-0314" / "ct.nii.gz")
    full_labels = sitk.GetArrayFromImage(sitk.ReadImage(
        str(lidc_dir / "scans" / "LIDC-IDRI-0314.consensus50.nii.gz"))).astype(np.uint16)
    ct, reference = slab(full, full_labels, (lps_z(full, 110), lps_z(full, 200)))  # nodule: k 159
    nodule = read_voi(lidc_dir, voi_case(lidc_dir, "LIDC-IDRI-0119_N1"))
    true_mm3 = nodule.mask.sum() * np.prod(nodule.spacing_zyx_mm)
    scale = 2 ** (1 / 3)
    grown = replace(nodule, spacing_zyx_mm=tuple(np.asarray(nodule.spacing_zyx_mm) * scale))
    spacing = ct.spacing_zyx_mm
    allowed = paste_allowed(ct.hu, reference, spacing)
    allowed[:30], allowed[-30:] = False, False  # away from the slab's ends
    places = np.argwhere(allowed[::4, ::8, ::8]) * [4, 8, 8]
    pasted, errors = {}, []
    for name, version, factor in (("prior", nodule, 1.0), ("grown", grown, scale ** 3)):
        hu, labels = ct.hu.copy(), reference.copy()
        centre = paste(hu, labels, allowed.copy(), 9, version, spacing, np.random.default_rng(0),
                       places if not pasted else np.array([pasted["prior"][2]]))
        assert centre is not None, f"{name}: the nodule did not fit"
        pasted[name] = (hu, labels, np.round(centre).astype(int))
        errors.append((labels == 9).sum() * np.prod(spacing) / (true_mm3 * factor) - 1)
    partial_volume = max(abs(e) for e in errors)
    prior_ct = CTVolume(pasted["prior"][0], ct.ijk_to_ras, "prior")
    moved, moved_labels, _ = moved_copy(CTVolume(pasted["grown"][0], ct.ijk_to_ras, "grown"),
                                            ROTATION_DEG, TRANSLATION_MM, pasted["grown"][1],
                                            (0.7, 0.7, 1.0))
    z_range = (lps_z(ct, 15), lps_z(ct, ct.hu.shape[0] - 15))
    current_ct, current_labels = slab(moved, moved_labels, z_range)
    prior = Scan(prior_ct, findings_from_labelmap(prior_ct, pasted["prior"][1]), pasted["prior"][1],
                 PRIOR_DATE)
    current = Scan(current_ct, findings_from_labelmap(current_ct, current_labels), current_labels,
                   CURRENT_DATE)
    result = compare.compare(prior, current)
    by_label = {m["prior"]["label"]: m for m in result["matches"]}
    assert sorted(by_label) == [1, 9] and not result["new"] and not result["resolved"]
    assert all(m["prior"]["label"] == m["current"]["label"] for m in result["matches"])
    found = by_label[9]
    ratio = 1 + found["volume_change_pct"] / 100
    bound = (1 + partial_volume) / (1 - partial_volume)  # each volume off by up to the error
    print(f"partial-volume error {100 * partial_volume:.1f} % (pastes: "
          f"{', '.join(f'{100 * e:+.1f} %' for e in errors)}); change "
          f"{found['volume_change_pct']:.1f} % for {100 * (scale ** 3 - 1):.1f} %; VDT "
          f"{found['vdt_days']:.0f} d for 180 d; the unchanged nodule 1: "
          f"{by_label[1]['volume_change_pct']:+.1f} %")
    assert 1 / bound <= ratio / scale ** 3 <= bound
    assert found["trend"] == "growing" and by_label[1]["trend"] == "stable"
    true_vdt = 180 * math.log(2) / math.log(scale ** 3)
    low, high = (180 * math.log(2) / math.log(scale ** 3 * f) for f in (bound, 1 / bound))
    assert low <= found["vdt_days"] <= high and low <= true_vdt <= high
    assert found["mean_diameter_change_mm"] > 1.5 and found["lung_rads_growth"] is True


def test_another_patient_gives_no_match(lidc_dir, ct_0001, reference_0001, tmp_path):
    """LIDC-IDRI-0001 (1 nodule) against LIDC-IDRI-0003 (4): nothing may match."""
    import SimpleITK as sitk

    folder = next(p.parent for p in (lidc_dir / "scans" / "LIDC-IDRI-0003").rglob("*.dcm"))
    other = read_ct(folder)
    other_labels = sitk.GetArrayFromImage(sitk.ReadImage(
        str(lidc_dir / "scans" / "LIDC-IDRI-0003.consensus50.nii.gz")))
    prior = Scan(ct_0001, findings_from_labelmap(ct_0001, reference_0001), reference_0001, PRIOR_DATE)
    current = Scan(other, findings_from_labelmap(other, other_labels), other_labels, CURRENT_DATE)
    registration = compare.register(ct_0001, other)
    result = compare.compare(prior, current, registration)
    assert result["matches"] == []
    assert len(result["resolved"]) == 1 and len(result["new"]) == 4
    compare.write_figures(result, prior, current, registration, tmp_path)
    assert [e["figure"] for e in result["new"]] == [f"new_{n}.png" for n in range(1, 5)]
    assert result["resolved"][0]["figure"] == "resolved_1.png"
    assert all((tmp_path / e["figure"]).stat().st_size > 10_000
               for e in result["new"] + result["resolved"])
    # The other patient's nodules placed exactly where the registration maps them in this
    # patient: the distance gate passes them all; the surroundings tell most apart (not all:
    # a place by the chest wall can look alike in two chests, see compare.MIN_LOCAL_SIMILARITY).
    twins = [replace(f, centroid_lps_mm=np.ravel(registration.to_prior(f.centroid_lps_mm)))
             for f in current.findings]
    pairs, similarity = compare.match(replace(prior, findings=twins), current, registration)
    print("local similarity at the other patient's nodules:",
          [round(v, 3) for v in similarity.values()])
    assert len(pairs) < len(twins)
    assert all(local >= compare.MIN_LOCAL_SIMILARITY for *_, local in pairs)
    assert min(similarity.values()) < compare.MIN_LOCAL_SIMILARITY


def test_growth_rules_at_their_boundaries():
    """VDT = dt ln2 / ln(V2/V1); stable within STABLE_PCT; Lung-RADS growth > 1.5 mm in 12 months."""
    def finding(volume_mm3, diameter_mm):
        return compare.Finding("n", 1, np.zeros(3), volume_mm3, diameter_mm)

    doubled = compare.change(finding(100, 6.0), finding(200, 7.6), 90)
    assert doubled["vdt_days"] == pytest.approx(90) and doubled["trend"] == "growing"
    assert doubled["lung_rads_growth"] is True
    edge = 100 * (1 + compare.STABLE_PCT / 100)
    assert compare.change(finding(100, 6), finding(edge, 6), 90)["trend"] == "stable"
    assert compare.change(finding(100, 6), finding(edge + 1, 6), 90)["trend"] == "growing"
    shrunk = compare.change(finding(200, 8), finding(100, 7), 90)
    assert shrunk["trend"] == "shrinking" and shrunk["vdt_days"] == pytest.approx(-90)
    assert compare.lung_rads_growth(6.0, 7.5, 100) is False   # exactly 1.5 mm: not growth
    assert compare.lung_rads_growth(6.0, 7.6, 365) is True
    assert compare.lung_rads_growth(6.0, 7.6, 366) is False   # beyond 12 months
    assert compare.lung_rads_growth(6.0, 7.6, None) is None   # interval unknown
    assert compare.change(finding(100, 6), finding(300, 8), None)["vdt_days"] is None


def test_dates_are_read_and_checked(series_0001):
    date, patient = compare.dicom_study(series_0001)
    assert date == dt.date(2000, 1, 1) and patient == "LIDC-IDRI-0001"  # LIDC's anonymised date
    assert compare.parse_date("2021-03-04", "--prior-date") == dt.date(2021, 3, 4)
    with pytest.raises(compare.NoduleSAMError, match="--prior-date 2021-13-01: not a date"):
        compare.parse_date("2021-13-01", "--prior-date")


def write_nifti(volume: CTVolume, path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.Cast(compare.to_sitk(volume.hu, volume), sitk.sitkInt16), str(path))


def boxes_json(labels: np.ndarray, values, path, margin: int = 3) -> None:
    """A --boxes file: the bounding box of each label value, ``margin`` px wider in-plane."""
    boxes = []
    for value in values:
        zs, ys, xs = np.nonzero(labels == value)
        boxes.append({"name": f"Nodule {value}",
                      "ijk": [int(zs.min()), int(zs.max()) + 1, int(ys.min()) - margin,
                              int(ys.max()) + 1 + margin, int(xs.min()) - margin,
                              int(xs.max()) + 1 + margin]})
    path.write_text(json.dumps({"boxes": boxes}))


def test_compare_command_end_to_end_on_given_boxes(lidc_dir, tmp_path):
    """`nodulesam compare` on a slab of LIDC-IDRI-0003 (its 13 mm nodule 3) and a moved,
    resampled copy, both refined from a box by the real refiner: a stable match, the dates from
    the options, compare.json and the figure. (With nodule 4 as well, about 4 minutes on 2
    loaded cores: both matched one to one, -0.1 % and -3.0 %.)"""
    import SimpleITK as sitk
    from NoduleSAMLib.cli import main

    folder = next(p.parent for p in (lidc_dir / "scans" / "LIDC-IDRI-0003").rglob("*.dcm"))
    ct = read_ct(folder)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(
        str(lidc_dir / "scans" / "LIDC-IDRI-0003.consensus50.nii.gz")))
    moved, moved_labels, _ = moved_copy(ct, ROTATION_DEG, TRANSLATION_MM, reference,
                                        MOVED_SPACING_MM)
    z_range = (lps_z(ct, 70), lps_z(ct, 100))  # nodules 3 and 4: slices 78-90
    prior, prior_labels = slab(ct, reference, z_range)
    current, current_labels = slab(moved, moved_labels, (z_range[0] + 5, z_range[1] + 5))
    write_nifti(prior, tmp_path / "prior.nii.gz")
    write_nifti(current, tmp_path / "current.nii.gz")
    boxes_json(prior_labels, (3,), tmp_path / "prior_boxes.json")
    boxes_json(current_labels, (3,), tmp_path / "current_boxes.json")
    out = tmp_path / "out"
    code = main(["compare", str(tmp_path / "prior.nii.gz"), str(tmp_path / "current.nii.gz"),
                 "--out", str(out), "--prior-boxes", str(tmp_path / "prior_boxes.json"),
                 "--current-boxes", str(tmp_path / "current_boxes.json"),
                 "--prior-date", "2020-01-10", "--current-date", "2020-07-08"])
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["interval_days"] == 180 and result["prior"]["date_from"] == "--prior-date"
    assert not result["new"] and not result["resolved"]
    assert [(m["prior"]["name"], m["current"]["name"]) for m in result["matches"]] == \
        [("Nodule 3", "Nodule 3")]
    for match in result["matches"]:
        print(f"{match['prior']['name']}: {match['prior_volume_mm3']:.0f} -> "
              f"{match['current_volume_mm3']:.0f} mm3 ({match['volume_change_pct']:+.1f} %)")
        assert match["trend"] == "stable" and match["vdt_days"] is None
        assert match["lung_rads_growth"] is False
        assert match["follow_up"]["lung_rads"] is not None
        assert (out / match["figure"]).stat().st_size > 10_000
    assert "not a diagnosis" in result["disclaimer"]
    for name in ("prior.seg.nrrd", "prior.json", "current.seg.nrrd", "current.json"):
        assert (out / name).is_file()


def test_compare_command_refuses_a_bad_date_before_any_work(tmp_path):
    from NoduleSAMLib.cli import main

    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), "--out",
                 str(out), "--current-date", "2020-02-30"]) == 2
    assert not out.exists()


@pytest.mark.slow
def test_compare_command_whole_engine_on_a_whole_scan(series_0001, tmp_path):
    """The whole engine (detector, classifier, refiner) on LIDC-IDRI-0001's DICOM and on a
    moved, resampled copy of it: its nodule matched and stable; dates from StudyDate (LIDC's
    anonymised 2000-01-01 in both) give no doubling time, with a message."""
    from NoduleSAMLib.cli import main

    ct = read_ct(series_0001)
    moved, _, _ = moved_copy(ct, ROTATION_DEG, TRANSLATION_MM, None, MOVED_SPACING_MM)
    write_nifti(moved, tmp_path / "current.nii.gz")
    out = tmp_path / "out"
    assert main(["compare", str(series_0001), str(tmp_path / "current.nii.gz"), "--out", str(out),
                 "--current-date", "2000-07-01"]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["prior"]["date_from"] == "StudyDate" and result["interval_days"] == 182
    nodule_1 = np.array([56.403, 86.343, -115.959])  # reference centroid, LPS mm
    found = [m for m in result["matches"]
             if np.linalg.norm(np.array(m["prior"]["centroid_lps_mm"]) - nodule_1) < 5]
    assert len(found) == 1 and found[0]["trend"] == "stable"
    print({k: len(result[k]) for k in ("matches", "new", "resolved")},
          f"nodule 1: {found[0]['volume_change_pct']:+.1f} %")
