"""False-positive reduction: the bundled candidate classifier, its cubes and its place in the pipeline."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from NoduleSAMLib import fpr as fpr_mod
from NoduleSAMLib.errors import NoduleSAMError
from NoduleSAMLib.models import fpr_folder
from NoduleSAMLib.pipeline import Pipeline


@pytest.fixture(scope="module")
def reducer():
    return fpr_mod.FalsePositiveReducer(fpr_folder("nodule-fpr"))


def test_bundled_classifier_loads_verified_with_calibrated_operating_points(reducer, tmp_path):
    card = json.loads((reducer.folder / "model.json").read_text())
    checkpoint = reducer.folder / card["checkpoint"]
    assert checkpoint.stat().st_size < 10e6
    points = card["operating_points"]
    assert all(points[name]["calibrated"] for name in fpr_mod.SENSITIVITIES)
    assert reducer.threshold("high") <= reducer.threshold("balanced") <= reducer.threshold("specific")
    # a tampered copy is refused, and so is a card without operating points
    copy = shutil.copytree(reducer.folder, tmp_path / "tampered")
    raw = bytearray((copy / card["checkpoint"]).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (copy / card["checkpoint"]).write_bytes(bytes(raw))
    with pytest.raises(NoduleSAMError, match="SHA-256"):
        fpr_mod.FalsePositiveReducer(copy)
    broken = shutil.copytree(reducer.folder, tmp_path / "broken")
    (broken / "model.json").write_text(json.dumps({k: v for k, v in card.items() if k != "operating_points"}))
    with pytest.raises(NoduleSAMError, match="broken model card"):
        fpr_mod.FalsePositiveReducer(broken)
    with pytest.raises(NoduleSAMError, match="nor a folder"):
        fpr_folder(tmp_path / "nothing")


def test_cube_is_isotropic_in_mm_and_air_outside_the_volume():
    # a 20 mm ball on 2.5 mm slices with 0.7 mm pixels looks round in the cube (up to the
    # blur of interpolating between thick slices)
    spacing = (2.5, 0.7, 0.7)
    z, y, x = np.mgrid[:24, :100, :100]
    ball = ((z - 12) * 2.5) ** 2 + ((y - 50) * 0.7) ** 2 + ((x - 50) * 0.7) ** 2 <= 10.0 ** 2
    hu = np.where(ball, 40.0, -900.0).astype(np.float32)
    geometry = fpr_mod.PatchGeometry((12.0, 50.0, 50.0), 20.0)
    assert geometry.fov_mm == 40.0
    cube = fpr_mod.extract_patch(hu, spacing, geometry)
    assert cube.shape == (fpr_mod.PATCH,) * 3
    inside = cube > 0
    extents = [np.ptp(np.nonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))[0]) + 1 for axis in range(3)]
    assert max(extents) - min(extents) <= 2, extents  # same size along z, y and x ...
    assert 14 <= min(extents) <= 17, extents  # ... 20 mm at 40 mm / 32 voxels
    # half the cube lies beyond the first slice: that half reads as air (the lowest value)
    edge = fpr_mod.extract_patch(hu, spacing, fpr_mod.PatchGeometry((0.0, 50.0, 50.0), 16.0))
    assert np.allclose(edge[:10], fpr_mod.normalise_hu(np.float32(-1024)))


def test_classifier_orders_and_filters_real_candidates(bundled_detector, ct_0001, reducer):
    """Plumbing on LIDC-IDRI-0001, a training scan of both models (in-distribution: no accuracy
    is read from it; the held-out FROC is in BENCHMARKS.md)."""
    detection = bundled_detector.predict(ct_0001)
    stages = Pipeline(bundled_detector, fpr=reducer).candidate_stages(ct_0001, detection)
    before, scored = stages["with_blobs"], stages["scored"]
    assert {c.box_ijk for c in scored} == {c.box_ijk for c in before}
    assert {c.box_ijk for c in stages["not_flat"]} <= {c.box_ijk for c in scored}
    assert {c.source for c in scored} == {"detector", "blob filter"}
    assert [c.score for c in scored] == sorted((c.score for c in scored), reverse=True)
    assert [c.name for c in scored] == [f"Nodule {n}" for n in range(1, len(scored) + 1)]
    by_box = {c.box_ijk: c for c in before}
    assert all(c.detector_score == by_box[c.box_ijk].detector_score for c in scored)
    # blob candidates never overlap a detector candidate that passed the filters
    detector_voxels = np.zeros(ct_0001.hu.shape, bool)
    for c in stages["not_flat"]:
        z0, z1, y0, y1, x0, x1 = c.box_ijk
        detector_voxels[z0:z1, y0:y1, x0:x1] |= c.detector_mask
    for c in scored:
        if c.source == "blob filter":
            z0, z1, y0, y1, x0, x1 = c.box_ijk
            assert not detector_voxels[z0:z1, y0:y1, x0:x1][c.detector_mask].any()
    kept = {}
    for sensitivity in fpr_mod.SENSITIVITIES:
        threshold = reducer.threshold(sensitivity)
        pipeline = Pipeline(bundled_detector, fpr=reducer, fpr_threshold=threshold)
        kept[sensitivity] = {c.box_ijk for c in pipeline.detect(ct_0001)}
        assert kept[sensitivity] == {c.box_ijk for c in scored if c.score >= threshold}
    assert kept["high"] >= kept["balanced"] >= kept["specific"]


def test_the_score_is_the_mean_over_the_cube_mirror_images(reducer, ct_0001):
    """Real cubes of LIDC-IDRI-0001: a mirrored or transposed cube scores the same, and the score
    is the mean of the network's probabilities over the 16 mirror images."""
    import torch

    spacing = ct_0001.spacing_zyx_mm
    geometries = [fpr_mod.PatchGeometry((z, 256.0, x), 12.0) for z, x in ((40, 150), (60, 360), (80, 200))]
    patches = np.stack([fpr_mod.extract_patch(ct_0001.hu, spacing, g) for g in geometries])
    extents = np.log([g.extent_mm for g in geometries])
    scores = reducer.score_patches(patches, extents, screen=0.0)
    assert len(fpr_mod.MIRRORS) == 16 and len(set(fpr_mod.MIRRORS)) == 16
    mirrored = reducer.score_patches(np.ascontiguousarray(patches[:, ::-1, :, ::-1]), extents, screen=0.0)
    transposed = reducer.score_patches(np.ascontiguousarray(patches.transpose(0, 1, 3, 2)), extents, screen=0.0)
    assert np.allclose(mirrored, scores, atol=1e-5) and np.allclose(transposed, scores, atol=1e-5)
    with torch.inference_mode():
        x = torch.from_numpy(patches)[:, None]
        e = torch.from_numpy(extents.astype(np.float32))
        each = [torch.sigmoid(reducer.network(fpr_mod.mirror(x, a, t), e)).numpy() for a, t in fpr_mod.MIRRORS]
    assert np.allclose(np.mean(each, axis=0), scores, atol=1e-5)
    assert np.ptp(np.stack(each), axis=0).max() > 0  # the network alone is not mirror-invariant
    # screening: a cube whose first view (the cube as it is) scores below the cut keeps that
    # view's score; the others get the 16-view mean
    first = np.sort(each[0])
    cut = float(first[0] + first[1]) / 2  # between two cubes' first views, away from both
    screened = reducer.score_patches(patches, extents, screen=cut)
    low = each[0] < cut
    assert np.allclose(screened[low], each[0][low], atol=1e-5)
    assert np.allclose(screened[~low], scores[~low], atol=1e-5)


def test_openvino_and_torch_give_the_same_scores(reducer, ct_0001):
    """The classifier compiled by OpenVINO (``auto`` picks it on a CPU where it is installed)
    scores real cubes of LIDC-IDRI-0001 as torch does."""
    pytest.importorskip("openvino")
    assert reducer.backend == "openvino"
    torch_reducer = fpr_mod.FalsePositiveReducer(fpr_folder("nodule-fpr"), backend="torch")
    assert torch_reducer.backend == "torch"
    spacing = ct_0001.spacing_zyx_mm
    geometries = [fpr_mod.PatchGeometry((z, y, x), size) for z, y, x, size in
                  ((40, 256, 150, 12.0), (60, 300, 360, 30.0), (80, 200, 200, 6.0), (100, 250, 120, 60.0))]
    patches = np.stack([fpr_mod.extract_patch(ct_0001.hu, spacing, g) for g in geometries])
    extents = np.log([g.extent_mm for g in geometries])
    compiled = reducer.score_patches(patches, extents, batch=3, screen=0.0)
    plain = torch_reducer.score_patches(patches, extents, screen=0.0)
    assert np.allclose(compiled, plain, atol=1e-5), (compiled, plain)
    assert np.ptp(plain) > 0.01  # different cubes, different scores
    with pytest.raises(NoduleSAMError, match="unknown classifier backend"):
        fpr_mod.FalsePositiveReducer(fpr_folder("nodule-fpr"), backend="tensorrt")
