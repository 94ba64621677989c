"""The blob filter: a round nodule is a candidate, a vessel (a tube) and anything outside the
lungs or on a detector component is not."""
from __future__ import annotations

import numpy as np

from NoduleSAMLib.blobs import blob_candidates

SPACING = (2.5, 0.7, 0.7)


def phantom():
    """Lung-like air with a 10 mm solid ball and a 5 mm wide vessel along z."""
    z, y, x = np.mgrid[:40, :200, :200]
    hu = np.full(z.shape, -850.0, np.float32)
    ball = ((z - 20) * 2.5) ** 2 + ((y - 100) * 0.7) ** 2 + ((x - 60) * 0.7) ** 2 <= 5.0 ** 2
    tube = ((y - 100) * 0.7) ** 2 + ((x - 150) * 0.7) ** 2 <= 2.5 ** 2
    hu[ball | tube] = 30.0
    return hu, ball


def test_a_ball_is_a_candidate_and_a_vessel_is_not():
    hu, ball = phantom()
    found = blob_candidates(hu, SPACING, np.ones(hu.shape, bool))
    assert len(found) == 1
    candidate = found[0]
    assert candidate.source == "blob filter" and candidate.score is None and candidate.blob_response > 0
    assert candidate.prior() is None  # no detector probability: SAM alone refines it
    z0, z1, y0, y1, x0, x1 = candidate.box_ijk
    mask = np.zeros(hu.shape, bool)
    mask[z0:z1, y0:y1, x0:x1] = candidate.detector_mask
    assert 2 * (mask & ball).sum() / (mask.sum() + ball.sum()) > 0.8
    assert candidate.prompt_boxes() and all(z0 <= z < z1 for z in candidate.prompt_boxes())


def test_blobs_outside_the_lungs_or_on_a_detection_are_dropped():
    hu, ball = phantom()
    lungs = np.ones(hu.shape, bool)
    lungs[:, :, :100] = False  # the ball's side is "outside the lungs"
    assert blob_candidates(hu, SPACING, lungs) == []
    assert blob_candidates(hu, SPACING, np.ones(hu.shape, bool), avoid=ball) == []


def test_a_blob_whose_centre_is_not_dense_is_dropped():
    """A ball whose centre voxel is at or below MASK_HU (a ring, hollow at the peak) gives no
    candidate rather than one whose mask is the air around it."""
    from NoduleSAMLib import blobs

    hu, ball = phantom()
    hu[20, 99:102, 59:62] = blobs.MASK_HU - 50  # a hollow centre
    assert blob_candidates(hu, SPACING, np.ones(hu.shape, bool)) == []


def test_grid_voxels_map_to_the_volume_as_zoom_placed_them():
    """``grid_to_volume`` inverts ``ndimage.zoom``'s placement: zoom a ramp of slice indices onto
    the filter's grid and every grid voxel's nearest slice is the one it names."""
    from scipy import ndimage

    from NoduleSAMLib.blobs import STEP_MM, grid_to_volume

    for slices, slice_mm in ((60, 5.0), (121, 3.0), (275, 1.0)):
        ramp = np.arange(slices, dtype=np.float64)[:, None, None] * np.ones((1, 2, 2))
        placed = ndimage.zoom(ramp, (slice_mm / STEP_MM, 1, 1), order=1)[:, 0, 0]
        grid = np.arange(len(placed))
        mapped = np.array([grid_to_volume((i, 0, 0), placed.shape + (2, 2), (slices, 2, 2))[0] for i in grid])
        assert np.abs(mapped - placed).max() <= 0.5 + 1e-9


def test_a_nodule_on_one_thick_slice_is_a_candidate():
    """On 5 mm slices a 7 mm nodule lies on one slice, faint (partial volume). The blob's centre
    must land on that slice: mapped by ``i / factor`` it fell on the next one, in the air, and the
    blob was dropped (a missed nodule on the demo CT's val copies)."""
    z, y, x = np.mgrid[:60, :120, :120]
    hu = np.full(z.shape, -850.0, np.float32)
    disc = (z == 31) & (((y - 60) * 0.57) ** 2 + ((x - 60) * 0.57) ** 2 <= 3.5 ** 2)
    hu[disc] = -250.0
    found = blob_candidates(hu, (5.0, 0.57, 0.57), np.ones(hu.shape, bool))
    assert len(found) == 1
    z0, z1 = found[0].box_ijk[:2]
    assert z0 <= 31 < z1 and found[0].detector_mask[31 - z0].any()
