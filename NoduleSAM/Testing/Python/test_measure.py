"""Measurements on shapes whose answers are known."""
import numpy as np
import pytest

from NoduleSAMLib.measure import axial_diameters_mm, measure_nodule
from NoduleSAMLib.volume import CTVolume


def test_ellipse_axes_in_mm_edge_to_edge():
    yy, xx = np.mgrid[:80, :80]
    ellipse = ((xx - 40) / 30.0) ** 2 + ((yy - 40) / 10.0) ** 2 <= 1.0  # 61 x 21 pixels
    long_mm, short_mm = axial_diameters_mm(ellipse, (0.5, 0.5))
    assert long_mm == pytest.approx(30.5, abs=0.3)  # 61 pixels of 0.5 mm, edge to edge
    assert short_mm == pytest.approx(10.5, abs=0.3)
    # anisotropic pixels: 61 rows of 0.5 mm (30.5 mm) across 21 columns of 2 mm (42 mm)
    long_mm, short_mm = axial_diameters_mm(ellipse.T, (0.5, 2.0))
    assert long_mm == pytest.approx(42.0, abs=0.6)
    assert short_mm == pytest.approx(30.5, abs=1.0)
    assert axial_diameters_mm(np.zeros((5, 5), bool), (1, 1)) == (0.0, 0.0)


def test_pixel_convention_is_edge_to_edge():
    one = np.zeros((5, 5), bool)
    one[2, 2] = True  # one 0.7 mm pixel: its diagonal both ways
    assert axial_diameters_mm(one, (0.7, 0.7)) == pytest.approx((0.7 * 2 ** 0.5, 0.7 * 2 ** 0.5))
    bar = np.zeros((5, 30), bool)
    bar[2, 5:25] = True  # 20 x 1 pixels of 1 mm: the long axis is the diagonal, the short axis
    long_mm, short_mm = axial_diameters_mm(bar, (1.0, 1.0))  # the chord across it, tilted with it
    assert long_mm == pytest.approx(np.hypot(20, 1))
    assert short_mm == pytest.approx(np.hypot(20, 1) / 20)


def test_short_axis_is_the_longest_chord_inside_a_non_convex_nodule():
    ell = np.zeros((50, 50), bool)  # an L: a 5 x 40 bar and a 40 x 5 bar sharing a corner
    ell[5:45, 5:10] = True
    ell[40:45, 5:45] = True
    long_mm, short_mm = axial_diameters_mm(ell, (1.0, 1.0))
    assert long_mm == pytest.approx(40 * 2 ** 0.5)  # outer corner to outer corner
    # every chord perpendicular to that diagonal crosses one 5-pixel arm: 5 * sqrt(2); the L's
    # width across the diagonal (what was reported before) is 31.8 mm
    assert short_mm == pytest.approx(5 * 2 ** 0.5)


def test_islands_do_not_lengthen_the_axes():
    two = np.zeros((40, 120), bool)
    two[10:20, 5:15] = True    # 10 x 10 pixels ...
    two[12:16, 100:104] = True  # ... and a 4 x 4 island 85 pixels away
    assert axial_diameters_mm(two, (1.0, 1.0)) == pytest.approx((10 * 2 ** 0.5, 10 * 2 ** 0.5))
    hu = np.full((3, 40, 120), -900.0, np.float32)
    mask = np.zeros(hu.shape, bool)
    mask[1] = two
    mask[0, 30:32, 60:110] = True  # a separate, smaller 3D component, longer in-plane
    mask[0, 10:20, 5:15] = True    # the main component goes on to slice 0 (26-connected)
    volume = CTVolume.from_lps(hu, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    m = measure_nodule(volume, mask)
    assert m["components"] == 3
    assert m["long_axis_mm"] == pytest.approx(10 * 2 ** 0.5)
    assert m["mean_diameter_mm"] == pytest.approx(10 * 2 ** 0.5)
    assert m["volume_mm3"] == pytest.approx(mask.sum())  # the volume is the whole segment's


def test_measure_nodule_volume_hu_and_centroid():
    hu = np.full((6, 20, 20), -900.0, np.float32)
    mask = np.zeros(hu.shape, bool)
    mask[2:4, 5:9, 10:14] = True
    hu[mask] = 40.0
    volume = CTVolume.from_lps(hu, (0.5, 0.5, 2.0), (10.0, 20.0, 30.0))
    m = measure_nodule(volume, mask)
    assert m["voxels"] == 32 and m["volume_mm3"] == pytest.approx(32 * 0.5 * 0.5 * 2.0)
    assert m["mean_hu"] == pytest.approx(40.0)
    np.testing.assert_allclose(m["centroid_lps_mm"], [10 + 11.5 * 0.5, 20 + 6.5 * 0.5, 30 + 2.5 * 2])
    np.testing.assert_allclose(m["centroid_ras_mm"], np.array(m["centroid_lps_mm"]) * [-1, -1, 1])
    assert m["long_axis_slice"] in (2, 3)
    assert m["long_axis_mm"] == pytest.approx(np.hypot(2.0, 2.0))  # corner to corner, edge to edge
    assert m["short_axis_mm"] == pytest.approx(np.hypot(2.0, 2.0))  # the other diagonal
    assert m["mean_diameter_mm"] == pytest.approx(np.hypot(2.0, 2.0))
    empty = measure_nodule(volume, np.zeros(hu.shape, bool))
    assert empty["volume_mm3"] == 0 and empty["mean_hu"] is None


def test_overview_shows_the_long_axis_slice_even_when_it_is_slice_0():
    from NoduleSAMLib.boxes import Candidate
    from NoduleSAMLib.outputs import overview_slice
    from NoduleSAMLib.pipeline import Nodule

    hu = np.full((3, 20, 20), -900.0, np.float32)
    hu[0, 5:12, 5:10] = 40.0  # the nodule lies on the first slice only
    volume = CTVolume.from_lps(hu, (0.7, 0.7, 5.0), (0.0, 0.0, 0.0))
    mask = hu > 0
    nodule = Nodule(Candidate("Nodule 1", (0, 3, 0, 20, 0, 20)), mask, measure_nodule(volume, mask))
    assert nodule.measurements["long_axis_slice"] == 0
    assert overview_slice(nodule) == 0
    empty = Nodule(Candidate("Nodule 2", (0, 3, 0, 20, 0, 20)), np.zeros_like(mask),
                   measure_nodule(volume, np.zeros_like(mask)))
    assert overview_slice(empty) == 1


def test_a_nodule_in_a_whole_ct_measures_as_in_its_own_crop(ct_0001, reference_0001):
    """LIDC-IDRI-0001's consensus nodule measured in the whole CT (where only its bounding box
    is read) and in a crop around it: the same sizes, and positions in the whole CT's frame."""
    mask = reference_0001 > 0
    whole = measure_nodule(ct_0001, mask)
    zs, ys, xs = (np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3))
    region = (slice(zs[0] - 2, zs[-1] + 3), slice(ys[0] - 5, ys[-1] + 6), slice(xs[0] - 5, xs[-1] + 6))
    crop = CTVolume(ct_0001.hu[region], ct_0001.ijk_to_ras, "crop")  # the crop's own frame
    alone = measure_nodule(crop, mask[region])
    for key in ("voxels", "volume_mm3", "long_axis_mm", "short_axis_mm", "components", "mean_hu"):
        assert whole[key] == pytest.approx(alone[key])
    assert whole["long_axis_slice"] == alone["long_axis_slice"] + region[0].start
    centroid = np.argwhere(mask).mean(axis=0)
    assert whole["centroid_ras_mm"] == pytest.approx(ct_0001.zyx_to_ras(centroid).tolist())
    assert whole["mean_hu"] == pytest.approx(float(ct_0001.hu[mask].mean()), rel=1e-5)
