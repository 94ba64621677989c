"""Measurements on shapes whose answers are known."""
import numpy as np
import pytest

from NoduleSAMLib.measure import axial_diameters_mm, measure_nodule
from NoduleSAMLib.volume import CTVolume


def test_ellipse_axes_in_mm():
    yy, xx = np.mgrid[:80, :80]
    ellipse = ((xx - 40) / 30.0) ** 2 + ((yy - 40) / 10.0) ** 2 <= 1.0  # 61 x 21 pixels
    long_mm, short_mm = axial_diameters_mm(ellipse, (0.5, 0.5))
    assert long_mm == pytest.approx(30.0, abs=0.6)
    assert short_mm == pytest.approx(10.0, abs=0.6)
    # anisotropic pixels: 61 rows of 0.5 mm (30 mm) across 21 columns of 2 mm (40 mm)
    long_mm, short_mm = axial_diameters_mm(ellipse.T, (0.5, 2.0))
    assert long_mm == pytest.approx(40.0, abs=0.6)
    assert short_mm == pytest.approx(30.0, abs=1.5)
    assert axial_diameters_mm(np.zeros((5, 5), bool), (1, 1)) == (0.0, 0.0)


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
    assert m["long_axis_mm"] == pytest.approx(np.hypot(1.5, 1.5))  # corner to corner centres
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
