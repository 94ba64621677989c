"""Detection with a real nnU-Net v2 2D model trained in this test session (see ../../../conftest.py)."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from NoduleSAMLib.boxes import candidates_from_mask
from NoduleSAMLib.detect import Detector
from NoduleSAMLib.errors import NoduleSAMError
from NoduleSAMLib.pipeline import Pipeline
from NoduleSAMLib.refine import BoxRefiner
from NoduleSAMLib.volume import read_ct


@pytest.fixture(scope="module")
def detector(tiny_voi_model):
    return Detector(tiny_voi_model)


@pytest.fixture(scope="module")
def test_vois(lidc_dir):
    """Five test-split VOIs with solid nodules of 8 mm or more: CT and 50% consensus mask."""
    cases = pd.read_csv(lidc_dir / "voi" / "cases.csv")
    chosen = cases[(cases.split == "test") & (cases.diameter_mm >= 8) &
                   (cases.texture_median >= 4)].case_id.head(5)
    out = []
    for cid in chosen:
        volume = read_ct(lidc_dir / "voi" / cid / "image.nii.gz")
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(lidc_dir / "voi" / cid /
                                                          "consensus50.nii.gz"))) > 0
        out.append((cid, volume, truth))
    return out


def test_detector_finds_nodules_on_every_slice_of_real_vois(detector, test_vois):
    found, dices = 0, []
    for cid, volume, truth in test_vois:
        detection = detector.predict(volume)
        assert detection.probability.shape == volume.hu.shape == detection.mask.shape
        assert 0.0 <= detection.probability.min() and detection.probability.max() <= 1.0
        np.testing.assert_array_equal(detection.mask, detection.probability > 0.5)
        found += bool((detection.mask & truth).any())
        dices.append(2 * (detection.mask & truth).sum() / (detection.mask.sum() + truth.sum()))
    assert found >= 4, f"nodules found in {found} of {len(test_vois)} VOIs"
    assert np.mean(dices) > 0.4, dices


def test_detect_then_refine_pipeline(detector, test_vois, sam):
    cid, volume, truth = test_vois[0]
    pipeline = Pipeline(detector, BoxRefiner(sam))
    candidates = pipeline.detect(volume)
    assert candidates and candidates[0].name == "Nodule 1"
    assert all(0 < c.score <= 1 for c in candidates)
    best = candidates[0]
    assert best.prompt_boxes(), "a detected candidate carries per-slice prompt boxes"
    result = pipeline.run(volume)
    assert result.nodules and {"detect_s", "refine_s", "total_s"} <= set(result.timings_s)
    labels = result.labelmap()
    assert (labels > 0)[truth].mean() > 0.5  # most of the nodule is segmented ...
    hit = next(n for n in result.nodules if (labels == n.label)[truth].any())
    painted = labels == hit.label
    z0, z1, y0, y1, x0, x1 = hit.candidate.box_ijk
    assert painted.sum() < 0.5 * (z1 - z0) * (y1 - y0) * (x1 - x0)  # ... not its whole box
    assert 2 * (painted & truth).sum() / (painted.sum() + truth.sum()) > 0.6, cid


def test_mirroring_and_fold_options(tiny_voi_model, test_vois, tmp_path):
    import hashlib

    import torch

    from NoduleSAMLib.detect import load_checkpoint

    _, volume, _ = test_vois[0]
    plain = Detector(tiny_voi_model, folds=(0,)).predict(volume)
    mirrored = Detector(tiny_voi_model, folds=(0,), mirroring=True).predict(volume)
    assert mirrored.probability.shape == volume.hu.shape
    difference = np.abs(mirrored.probability - plain.probability)
    assert difference.max() > 1e-3  # the flipped copies were predicted and averaged in
    assert 2 * (mirrored.mask & plain.mask).sum() / (mirrored.mask.sum() + plain.mask.sum()) > 0.7

    # a two-fold ensemble: fold_1 is fold_0 with its output layer biased toward the nodule
    folder = tmp_path / "two_folds"
    shutil.copytree(tiny_voi_model, folder)
    checkpoint = load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    bias = sorted(k for k in checkpoint["network_weights"] if "seg_layers" in k and k.endswith("bias"))[-1]
    checkpoint["network_weights"][bias] = checkpoint["network_weights"][bias] + torch.tensor(
        [-1.0, 1.0], dtype=checkpoint["network_weights"][bias].dtype)
    (folder / "fold_1").mkdir()
    torch.save(checkpoint, folder / "fold_1" / "checkpoint_final.pth")
    card = json.loads((folder / "model.json").read_text())
    with pytest.raises(NoduleSAMError, match="has no SHA-256"):
        Detector(folder, folds=(0, 1))  # an unpinned checkpoint beside pinned ones is refused
    card["sha256"]["fold_1/checkpoint_final.pth"] = hashlib.sha256(
        (folder / "fold_1" / "checkpoint_final.pth").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(card))
    biased = Detector(folder, folds=(1,)).predict(volume).probability
    both = Detector(folder, folds=(0, 1)).predict(volume).probability
    assert (biased >= plain.probability - 1e-4).all() and (biased - plain.probability).max() > 0.05
    # nnU-Net averages the folds' logits: the ensemble lies between the two folds, apart from both
    assert (both >= plain.probability - 1e-4).all() and (both <= biased + 1e-4).all()
    assert (both - plain.probability).max() > 0.02 and (biased - both).max() > 0.02


def broken_copy(source, target, change):
    shutil.copytree(source, target)
    change(target)
    return target


def test_bad_detector_folders_are_explained(tiny_voi_model, tmp_path):
    with pytest.raises(NoduleSAMError, match="plans.json is missing"):
        Detector(broken_copy(tiny_voi_model, tmp_path / "a", lambda f: (f / "plans.json").unlink()))
    with pytest.raises(NoduleSAMError, match="fold_1.*missing.*folds present: fold_0"):
        Detector(tiny_voi_model, folds=(1,))

    def tamper(folder):
        checkpoint = folder / "fold_0" / "checkpoint_final.pth"
        data = bytearray(checkpoint.read_bytes())
        data[-100] ^= 0xFF
        checkpoint.write_bytes(bytes(data))
    with pytest.raises(NoduleSAMError, match="does not match the pinned"):
        Detector(broken_copy(tiny_voi_model, tmp_path / "b", tamper))

    def make_3d(folder):
        plans = json.loads((folder / "plans.json").read_text())
        plans["configurations"]["2d"]["patch_size"] = [8, 64, 64]
        (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(NoduleSAMError, match="must be an nnU-Net v2 2D model"):
        Detector(broken_copy(tiny_voi_model, tmp_path / "c", make_3d))
    with pytest.raises(NoduleSAMError, match="not found"):
        Detector(tmp_path / "nowhere")


def test_candidates_from_a_mask():
    mask = np.zeros((6, 40, 40), bool)
    mask[1:4, 10:16, 10:18] = True   # 144 voxels
    mask[2, 30, 30] = True           # a speck, below the minimum volume
    probability = mask * 0.9
    candidates = candidates_from_mask(mask, probability, (2.0, 0.7, 0.7), min_volume_mm3=15,
                                      expansion=0.0, pad_px=2)
    assert len(candidates) == 1
    c = candidates[0]
    assert c.name == "Nodule 1" and c.score == pytest.approx(0.9)
    assert c.box_ijk == (0, 5, 8, 18, 8, 20)  # one slice beyond the component above and below
    assert sorted(c.slice_boxes) == [1, 2, 3]
    np.testing.assert_allclose(c.slice_boxes[2], [8, 8, 19, 17])
    assert c.detector_mask.sum() == 144


def test_lung_fields_hold_the_nodules_and_not_the_bones(ct_0001, reference_0001):
    from NoduleSAMLib.lungs import lung_mask

    lungs = lung_mask(ct_0001.hu, ct_0001.spacing_zyx_mm)
    assert lungs.shape == ct_0001.hu.shape
    assert lungs[reference_0001 > 0].all()  # nodule 1 touches the pleura, and is kept
    assert 0.05 < lungs.mean() < 0.4
    assert lungs[ct_0001.hu > 400].mean() < 0.1  # bone
    assert not lungs[:, :10].any() and not lungs[:, :, :10].any()  # air around the patient


def test_in_lungs_gate_drops_and_renumbers():
    from NoduleSAMLib.boxes import in_lungs

    mask = np.zeros((4, 40, 40), bool)
    mask[1:3, 5:10, 5:10] = True
    mask[1:3, 25:30, 25:30] = True
    probability = mask * 0.8
    probability[1:3, 5:10, 5:10] = 0.9
    candidates = candidates_from_mask(mask, probability, (1.0, 1.0, 1.0), min_volume_mm3=1)
    lungs = np.zeros_like(mask)
    lungs[:, 20:, 20:] = True
    kept = in_lungs(candidates, lungs, 0.5)
    assert [c.name for c in kept] == ["Nodule 1"] and kept[0].score == pytest.approx(0.8)


def test_lung_gate_applies_to_whole_chest_slices_only(ct_0001, nodule_crop_0001):
    from NoduleSAMLib.lungs import shows_whole_chest

    assert shows_whole_chest(ct_0001.hu.shape, ct_0001.spacing_zyx_mm)
    crop, _ = nodule_crop_0001
    assert not shows_whole_chest(crop.hu.shape, crop.spacing_zyx_mm)


def test_flat_detections_are_dropped_round_ones_kept():
    from NoduleSAMLib.boxes import depth_ratio, round_enough

    mask = np.zeros((12, 60, 60), bool)
    mask[2:10, 5:15, 5:15] = True      # 8 slices x 2.5 mm = 20 mm deep, 10 x 0.7 = 7 mm wide
    mask[5:7, 30:58, 30:50] = True     # 2 slices (5 mm) deep, 28 x 0.7 = 19.6 mm wide: flat
    candidates = candidates_from_mask(mask, mask * 0.9, (2.5, 0.7, 0.7), min_volume_mm3=1)
    ratios = sorted(depth_ratio(c, (2.5, 0.7, 0.7)) for c in candidates)
    assert ratios == pytest.approx([5 / 19.6, 20 / 7])
    kept = round_enough(candidates, (2.5, 0.7, 0.7), 0.35, n_slices=12)
    assert len(kept) == 1 and kept[0].detector_mask.sum() == 8 * 100 and kept[0].name == "Nodule 1"
    # a flat detection on the volume's last slice may be a nodule cut by the scan: kept
    mask[5:7, 30:58, 30:50] = False
    mask[10:12, 30:58, 30:50] = True
    candidates = candidates_from_mask(mask, mask * 0.9, (2.5, 0.7, 0.7), min_volume_mm3=1)
    assert len(round_enough(candidates, (2.5, 0.7, 0.7), 0.35, n_slices=12)) == 2
    assert len(round_enough(candidates, (2.5, 0.7, 0.7), 0.35)) == 1


def test_the_flat_filter_keeps_a_nodule_detected_on_one_of_its_slices():
    """A 10 mm nodule on 2.5 mm slices crosses 4 slices; the detector found it on one. The CT
    gives it back its depth; a vessel lying in the slice plane, found on one slice, stays flat."""
    from NoduleSAMLib.boxes import depth_ratio, round_enough

    spacing = (2.5, 0.7, 0.7)
    zz, yy, xx = np.mgrid[:12, :80, :80]
    z_mm, y_mm, x_mm = (zz - 5.5) * 2.5, yy * 0.7, xx * 0.7
    nodule = (z_mm ** 2 + (y_mm - 14) ** 2 + (x_mm - 14) ** 2) <= 5.0 ** 2  # 10 mm ball
    vessel = ((z_mm - 1.25) ** 2 + (y_mm - 40) ** 2 <= 1.5 ** 2) & (x_mm > 20) & (x_mm < 50)
    hu = np.where(nodule | vessel, 30.0, -850.0).astype(np.float32)
    detected = np.zeros(hu.shape, bool)
    detected[6] = nodule[6] | vessel[6]  # one slice of each
    candidates = candidates_from_mask(detected, detected * 0.9, spacing, min_volume_mm3=1)
    ball, tube = sorted(candidates, key=lambda c: c.box_ijk[4])
    assert depth_ratio(ball, spacing) < 0.35  # the mask alone: one slice, judged flat
    # the CT: the two middle slices are dense over most of the detection (the caps are smaller)
    assert depth_ratio(ball, spacing, hu) == pytest.approx(2 * 2.5 / (13 * 0.7))
    assert depth_ratio(tube, spacing, hu) < 0.35  # 3 mm thick over 30 mm long
    kept = round_enough(candidates, spacing, 0.35, n_slices=12, hu=hu)
    assert [c.box_ijk for c in kept] == [ball.box_ijk]


def test_in_distribution_bundled_detector_on_a_whole_ct_and_the_flat_filter(
        bundled_detector, ct_0001, reference_0001):
    """The shipped detector on all 133 slices of LIDC-IDRI-0001. That scan trained the detector,
    so this is an in-distribution check of the filters' plumbing, not evidence of accuracy (the
    held-out FROC is ``nodulesam-train evaluate-detection``, BENCHMARKS.md)."""
    from NoduleSAMLib.boxes import depth_ratio

    detector = bundled_detector
    everything = Pipeline(detector, min_in_lungs=0, min_depth_ratio=0).detect(ct_0001)
    filtered = Pipeline(detector).detect(ct_0001)

    def hits(candidate):
        z0, z1, y0, y1, x0, x1 = candidate.box_ijk
        return (reference_0001[z0:z1, y0:y1, x0:x1][candidate.detector_mask] > 0).any()

    assert [c.name for c in filtered if hits(c)] == ["Nodule 1"]  # the nodule, first by score
    assert len(filtered) < len(everything)
    flat = [c for c in everything if depth_ratio(c, ct_0001.spacing_zyx_mm) < 0.35]
    assert flat and not any(hits(c) for c in flat)
    kept_boxes = {c.box_ijk for c in filtered}
    assert not kept_boxes & {c.box_ijk for c in flat}


def test_the_detector_sees_the_lung_field_and_nothing_else_of_a_whole_ct(bundled_detector, ct_0001):
    """On a whole chest CT the network runs on the lung field's slices (+ 10 mm) only; in-plane,
    LIDC-IDRI-0001's 360 mm field of view is narrower than one 374 mm tile, so it keeps all of
    each slice. (In-distribution scan: plumbing, not accuracy.)"""
    from NoduleSAMLib.detect import LUNG_MARGIN_MM, detection_region
    from NoduleSAMLib.lungs import lung_mask

    spacing = ct_0001.spacing_zyx_mm
    zs, ys, xs = detection_region(ct_0001.hu, spacing, bundled_detector.detector.tile_mm)
    assert (ys, xs) == (slice(0, 512), slice(0, 512))
    lungs = lung_mask(ct_0001.hu, spacing)
    with_lungs = np.nonzero(lungs.any(axis=(1, 2)))[0]
    margin = int(np.ceil(LUNG_MARGIN_MM / spacing[0]))
    assert zs == slice(max(0, with_lungs[0] - margin), min(133, with_lungs[-1] + 1 + margin))
    detection = bundled_detector.predict(ct_0001)
    outside = np.ones(ct_0001.hu.shape, bool)
    outside[zs] = False
    assert zs.stop - zs.start < 133 and detection.probability[outside].max() == 0
    assert not detection.mask[outside].any() and detection.mask[zs].any()
    np.testing.assert_array_equal(detection.lungs, lungs)  # the candidate filters reuse it


def test_a_wide_field_of_view_is_cut_to_one_tile_around_the_lungs(lidc_dir):
    """LIDC-IDRI-0314 (400 mm field of view, 0.78 mm pixels): the slice is cut to the 373 mm
    (one tile) about the lung field, which it contains with its margin; a VOI is not cut."""
    from NoduleSAMLib.detect import LUNG_MARGIN_MM, detection_region
    from NoduleSAMLib.lungs import lung_mask

    ct = read_ct(lidc_dir / "scans" / "LIDC-IDRI-0314" / "ct.nii.gz")
    spacing = ct.spacing_zyx_mm
    tile_mm = [288 * 1.3, 288 * 1.3]
    region = detection_region(ct.hu, spacing, tile_mm)
    lungs = lung_mask(ct.hu, spacing)
    margin = int(np.ceil(LUNG_MARGIN_MM / spacing[1]))
    for axis, cut in ((1, region[1]), (2, region[2])):
        present = np.nonzero(lungs.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        assert cut.stop - cut.start == int(tile_mm[axis - 1] / spacing[axis]) - 1 < 512
        assert cut.start <= present[0] - margin and present[-1] + margin < cut.stop
    assert round((region[2].stop - region[2].start) * spacing[2] / 1.3) <= 288  # nnU-Net's resampled size
    voi = read_ct(lidc_dir / "voi" / "LIDC-IDRI-0001_N1" / "image.nii.gz")
    assert detection_region(voi.hu, voi.spacing_zyx_mm, tile_mm) is None


def test_openvino_and_torch_detectors_agree(lidc_dir, test_vois):
    """The bundled detector on OpenVINO and on torch, on real test-split VOIs."""
    pytest.importorskip("openvino")
    from NoduleSAMLib.models import detector_folder

    folder = detector_folder("nodule-detector")
    on_torch, on_openvino = Detector(folder, backend="torch"), Detector(folder, backend="openvino")
    assert (on_torch.backend, on_openvino.backend) == ("torch", "openvino")
    for _, volume, _ in test_vois[:3]:
        a, b = on_torch.predict(volume), on_openvino.predict(volume)
        assert np.abs(a.probability - b.probability).max() < 0.01  # 0.003 seen
        assert (a.mask != b.mask).sum() <= 0.001 * a.mask.size
        assert a.mask.any()
    with pytest.raises(NoduleSAMError, match="unknown detector backend"):
        Detector(folder, backend="tensorrt")


def test_openvino_detector_is_the_same_on_one_thread_and_two(test_vois):
    """A batch worker with one CPU must reproduce ``segment`` on two: OpenVINO's kernels differ
    on a single thread, so the detector never compiles for fewer than two."""
    pytest.importorskip("openvino")
    import torch

    from NoduleSAMLib.models import detector_folder

    folder, volume = detector_folder("nodule-detector"), test_vois[0][1]
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            detector = Detector(folder)
            assert detector.backend == "openvino"  # auto, on a CPU where it is installed
            results.append(detector.predict(volume))
    finally:
        torch.set_num_threads(before)
    assert results[0].mask.any()
    np.testing.assert_array_equal(results[0].probability, results[1].probability)
    np.testing.assert_array_equal(results[0].mask, results[1].mask)


def test_opencv_resampling_matches_nnunets(lidc_dir, test_vois):
    """``resample_slices`` against nnU-Net's own resampling (scikit-image) on real CT slices:
    linear the same to float precision, cubic 2 HU apart on average (a different cubic kernel:
    OpenCV's, not a spline); and
    the bundled detector's masks with either on real test-split VOIs nearly the same."""
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    from NoduleSAMLib.detect import resample_slices
    from NoduleSAMLib.models import detector_folder

    ct = read_ct(lidc_dir / "scans" / "LIDC-IDRI-0314" / "ct.nii.gz")
    data = ct.hu[None, 150:153].astype(np.float32)
    spacing, target = [1.0, 0.78125, 0.78125], [1.0, 1.3, 1.3]
    shape = [3, round(512 * 0.78125 / 1.3), round(512 * 0.78125 / 1.3)]
    for order, tolerance in ((1, 1e-3), (3, 5.0)):  # seen: 7.5e-6 and 2.0 HU mean
        theirs = resample_data_or_seg_to_shape(data, shape, spacing, target, order=order, order_z=0)
        ours = resample_slices(data, shape, spacing, target, order=order)
        assert ours.shape == theirs.shape == (1, *shape)
        assert np.abs(ours - theirs).mean() < tolerance, (order, np.abs(ours - theirs).mean())
    assert resample_slices(data, data.shape[1:]) is data
    folder = detector_folder("nodule-detector")
    fast, slow = Detector(folder), Detector(folder, opencv_resampling=False)
    for _, volume, truth in test_vois[:3]:
        a, b = fast.predict(volume), slow.predict(volume)
        assert (a.mask ^ b.mask).sum() <= 0.05 * max(1, b.mask.sum())
        assert (a.mask & truth).any() == (b.mask & truth).any()
