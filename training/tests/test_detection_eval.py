"""Per-nodule detection evaluation on a real held-out scan with the real bundled models.

NSCLC-Radiomics LUNG1-003 is held out from every model's training. Its tumour GTV-1 is the
reference lesion; the lymph nodes GTV-2 and GTV-3 lie outside the lungs and are ignored. These
tests check the matching and the command's outputs, not accuracy: the numbers are benchmarks
(BENCHMARKS.md). About 60 s on 2 cores.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from lidc_data import LIDC_DIR, needs_chest, needs_voi

pytestmark = [needs_chest, needs_voi]


@pytest.fixture(scope="module")
def lung1_003():
    from nodulesam_train import scans

    return scans.load_scan("NSCLC-Radiomics-LUNG1-003", LIDC_DIR)


@pytest.fixture(scope="module")
def models():
    from NoduleSAMLib.detect import Detector
    from NoduleSAMLib.fpr import FalsePositiveReducer
    from NoduleSAMLib.models import detector_folder, fpr_folder

    detector = Detector(detector_folder("nodule-detector"))
    detector.predictor.allow_tqdm = False
    return detector, FalsePositiveReducer(fpr_folder("nodule-fpr"))


def test_references_of_a_held_out_scan(lung1_003):
    from nodulesam_train import scans

    assert "NSCLC-Radiomics-LUNG1-003" in scans.HELD_OUT_SCANS
    assert [lesion.value for lesion in lung1_003.lesions] == [1]
    assert lung1_003.ignored == [2, 3]
    assert lung1_003.lesions[0].diameter_mm > 50


def test_matching_with_the_real_detector_and_classifier(lung1_003, models):
    from NoduleSAMLib.pipeline import Pipeline
    from nodulesam_train import froc

    detector, fpr = models
    stages = Pipeline(detector, None, fpr=fpr).candidate_stages(lung1_003.volume, detector.predict(lung1_003.volume))
    candidates = stages["scored"]
    assert candidates, "the detector proposed nothing on a chest CT"
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    outcome = froc.match(candidates, scores, lung1_003.labels, [1], [2, 3])
    # check every candidate's fate against the label map directly
    for index, candidate in enumerate(candidates):
        z0, z1, y0, y1, x0, x1 = candidate.box_ijk
        under = set(np.unique(lung1_003.labels[z0:z1, y0:y1, x0:x1][candidate.detector_mask]).tolist())
        assert (index in outcome.fp_index) == (not under - {0})
    on_tumour = [c.score for c in candidates if _touches(c, lung1_003.labels, 1)]
    if on_tumour:
        assert outcome.lesion_scores == {1: max(on_tumour)}
    else:
        assert outcome.lesion_scores == {}


def _touches(candidate, labels, value) -> bool:
    z0, z1, y0, y1, x0, x1 = candidate.box_ijk
    return bool((labels[z0:z1, y0:y1, x0:x1][candidate.detector_mask] == value).any())


def test_pasted_copies_keep_the_original_and_label_each_nodule(lung1_003):
    from nodulesam_train.detection_eval import evaluation_scans

    scans = evaluation_scans("val", ["NSCLC-Radiomics-LUNG1-003"], LIDC_DIR, per_copy=3, seed=1,
                             log=lambda *a: None, limit=5)
    (original, counts), *copies = scans
    assert counts and not any(c for _, c in copies) and len(copies) == 2
    assert np.array_equal(original.volume.hu, lung1_003.volume.hu)
    pasted = [lesion for scan, _ in copies for lesion in scan.lesions]
    assert len(pasted) >= 4 and all(lesion.kind == "pasted" and lesion.value >= 1000 for lesion in pasted)
    for scan, _ in copies:
        assert set(scan.ignored) == {1, 2, 3}  # the scan's own lesions count once, on the original
        changed = scan.volume.hu != lung1_003.volume.hu
        pasted_voxels = scan.labels >= 1000
        assert pasted_voxels.any() and changed.any()
        assert changed[pasted_voxels].mean() > 0.5  # the HU changed where the nodules went ...
        assert not (scan.labels[~pasted_voxels] != lung1_003.labels[~pasted_voxels]).any()  # ... labels only there


def test_a_thicker_copy_of_a_scan_averages_its_slices_in_place(lung1_003):
    """``scans.thicker``: the training background of twice the slice thickness (6 mm here)."""
    from NoduleSAMLib.geometry import apply_matrix
    from nodulesam_train import scans

    thick = scans.thicker(lung1_003, 2)
    hu, volume = lung1_003.volume.hu, thick.volume
    assert volume.hu.shape == (hu.shape[0] // 2,) + hu.shape[1:]
    assert volume.spacing_zyx_mm == pytest.approx(lung1_003.volume.spacing_zyx_mm * [2, 1, 1])
    assert np.allclose(volume.hu[5], (hu[10].astype(np.float32) + hu[11]) / 2, atol=0.5)
    # the new slice 5 lies midway between the old slices 10 and 11, in world coordinates
    old = apply_matrix(lung1_003.volume.ijk_to_ras, np.array([[7.0, 9.0, 10.0], [7.0, 9.0, 11.0]])).mean(axis=0)
    assert apply_matrix(volume.ijk_to_ras, np.array([[7.0, 9.0, 5.0]]))[0] == pytest.approx(old)
    assert (thick.labels == 1).any() and thick.lesions == lung1_003.lesions and thick.ignored == [2, 3]
    assert (thick.labels == 1).sum() * 2 >= (lung1_003.labels == 1).sum()  # a lesion's slices stay labelled


def test_a_nodule_pasted_onto_thick_slices_stays_in_the_hu():
    """Resampled as a CT forms its voxels (the mean over each voxel's extent, on a grid centred on
    the nodule): a 4.5 mm VOI nodule on 0.7 mm slices, put onto 5 mm slices at any slice phase,
    is still denser than its lung where it is labelled; a 17 mm one keeps its volume."""
    from nodulesam_train.detection_eval import read_cases
    from nodulesam_train.paste import read_voi, resampled

    cases = {c["case_id"]: c for c in read_cases(LIDC_DIR)}
    small = read_voi(LIDC_DIR, cases["LIDC-IDRI-0582_N6"])
    lung_hu = float(np.median(small.hu[~small.mask]))
    for phase in (-0.5, -0.25, 0.0, 0.25, 0.5):
        hu, mask, alpha = resampled(small, (5.0, *small.spacing_zyx_mm[1:]), (phase, 0.0, 0.0))
        assert mask.any() and alpha[mask].min() == 1.0
        assert hu[mask].mean() > lung_hu + 200, phase
        assert small.hu.min() <= hu.min() and hu.max() <= small.hu.max()  # means of the VOI's own HU
    large = read_voi(LIDC_DIR, cases["LIDC-IDRI-0190_N2"])
    volume = large.mask.sum() * np.prod(large.spacing_zyx_mm)
    for thickness in (1.0, 3.0, 5.0):
        spacing = (thickness, *large.spacing_zyx_mm[1:])
        _, mask, _ = resampled(large, spacing, (0.3, 0.0, 0.0))
        assert mask.sum() * np.prod(spacing) == pytest.approx(volume, rel=0.1), thickness


def test_evaluate_detection_command_writes_its_outputs(tmp_path):
    import shutil

    from NoduleSAMLib.models import fpr_folder
    from nodulesam_train.cli import main

    bundled = fpr_folder("nodule-fpr")
    before = (bundled / "model.json").read_text()
    classifier = shutil.copytree(bundled, tmp_path / "fpr")  # --calibrate writes into its model.json
    out = tmp_path / "det"
    code = main(["evaluate-detection", "--split", "val", "--scans", "NSCLC-Radiomics-LUNG1-003",
                 "--limit", "4", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--fpr", str(classifier), "--calibrate"])
    assert code == 0
    assert (bundled / "model.json").read_text() == before
    summary = json.loads((out / "summary.json").read_text())
    main_row = summary["rows"][summary["main_row"]]
    assert main_row["scans"] == 1 and main_row["real"]["lesions"] == 1
    assert main_row["pasted"]["lesions"] >= 3
    assert len(main_row["all"]["sensitivity"]) == 7
    assert main_row["all"]["cpm"] == pytest.approx(np.mean(main_row["all"]["sensitivity"]))
    for name in ("froc.png", "summary.md", "false_positives.csv"):
        assert (out / name).stat().st_size > 0
    assert len(summary["false_positives"]) == main_row["false_positives_total"]
    for fp in summary["false_positives"]:
        assert (out / fp["thumbnail"]).is_file()
    assert set(summary["operating_points"]) == {"high", "balanced", "specific"}
    # the operating points written into the classifier's card are the val FROC's thresholds
    card = json.loads((classifier / "model.json").read_text())["operating_points"]
    thresholds = dict(zip(main_row["all"]["rates"], main_row["all"]["thresholds"]))
    for name, rate in (("high", 2.0), ("balanced", 1.0), ("specific", 0.25)):
        assert card[name]["calibrated"] and card[name]["fp_rate_target"] == rate
        assert card[name]["threshold"] == max(0.0, thresholds[rate])
        assert card[name]["fp_per_scan"] <= rate
    # calibrating reads a val FROC only
    assert main(["evaluate-detection", "--split", "test", "--calibrate", "--fpr", str(classifier),
                 "--out", str(tmp_path / "y")]) == 2
    # a training scan is refused: no accuracy on data a model trained on
    assert main(["evaluate-detection", "--scans", "LIDC-IDRI-0001", "--out", str(tmp_path / "x")]) == 2
