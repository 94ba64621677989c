"""Coordinate transforms: IJK <-> RAS <-> LPS, voxel boxes <-> corners, crop <-> full slice."""
import numpy as np
import pytest

from NoduleSAMLib.geometry import (Crop2D, RAS_FROM_LPS, apply_matrix, box2d_of_mask,
                                   box3d_corners_ijk, box3d_from_corners_ijk, clip_box3d,
                                   expand_box2d)
from NoduleSAMLib.volume import CTVolume


def oblique_volume():
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                          [0, 0, 1]])
    hu = np.zeros((5, 6, 7), np.float32)
    return CTVolume.from_lps(hu, (0.7, 0.8, 2.5), (-160.0, -170.0, -340.0), direction)


def test_ijk_ras_lps_round_trip():
    volume = oblique_volume()
    points_zyx = np.array([[0, 0, 0], [4, 5, 6], [2.5, 1.25, 3.75]])
    ras = volume.zyx_to_ras(points_zyx)
    lps = volume.zyx_to_lps(points_zyx)
    np.testing.assert_allclose(lps, ras * [-1, -1, 1])
    back = apply_matrix(np.linalg.inv(volume.ijk_to_ras), ras)[:, ::-1]
    np.testing.assert_allclose(back, points_zyx, atol=1e-9)
    np.testing.assert_allclose(volume.spacing_ijk_mm, [0.7, 0.8, 2.5])
    np.testing.assert_allclose(volume.origin_lps_mm, [-160, -170, -340])
    np.testing.assert_allclose(volume.ijk_to_lps, RAS_FROM_LPS @ volume.ijk_to_ras)
    # voxel (i=1) steps 0.7 mm along the first direction column, in LPS
    step = volume.zyx_to_lps([0, 0, 1]) - volume.zyx_to_lps([0, 0, 0])
    np.testing.assert_allclose(step, 0.7 * volume.direction_lps[:, 0])


@pytest.mark.parametrize("box", [(0, 5, 0, 6, 0, 7), (1, 3, 2, 4, 3, 6), (2, 3, 0, 1, 6, 7)])
def test_box_corners_round_trip_through_world(box):
    volume = oblique_volume()
    corners_ras = apply_matrix(volume.ijk_to_ras, box3d_corners_ijk(box))
    corners_ijk = apply_matrix(np.linalg.inv(volume.ijk_to_ras), corners_ras)
    assert box3d_from_corners_ijk(corners_ijk) == box


def test_clip_box3d():
    assert clip_box3d((-2, 3, 1, 99, 4, 5), (5, 6, 7)) == (0, 3, 1, 6, 4, 5)
    assert clip_box3d((6, 9, 0, 6, 0, 7), (5, 6, 7)) is None
    assert clip_box3d((2, 2, 0, 6, 0, 7), (5, 6, 7)) is None


def test_crop_extract_paste_and_box_round_trip():
    image = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    box = np.array([25, 15, 29, 19])  # touches the bottom-right corner
    crop = Crop2D.around(box, margin_px=4, min_size_px=8)
    assert crop.size == 13
    pixels = crop.extract(image, fill=-1)
    assert pixels.shape == (13, 13)
    np.testing.assert_allclose(crop.box_to_full(crop.box_to_crop(box)), box)
    x0, y0, x1, y1 = crop.box_to_crop(box).astype(int)
    np.testing.assert_array_equal(pixels[y0:y1 + 1, x0:x1 + 1], image[15:20, 25:30])
    assert (pixels[-1] == -1).all() and (pixels[:, -1] == -1).all()  # outside the image
    pasted = crop.paste(pixels, image.shape)
    inside = pasted != 0
    np.testing.assert_array_equal(pasted[inside], image[inside])
    assert inside[15:20, 25:30].all()


def test_box_of_mask_and_expansion():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    box = box2d_of_mask(mask)
    np.testing.assert_array_equal(box, [3, 2, 8, 4])
    assert box2d_of_mask(np.zeros((3, 3), bool)) is None
    np.testing.assert_allclose(expand_box2d(box, 0.0, 2.0), [1, 0, 10, 6])
    np.testing.assert_allclose(expand_box2d(box, 0.5, 0.0), [0, 0.5, 11, 5.5])
    np.testing.assert_allclose(expand_box2d(box, 0.0, 5.0, shape_yx=(10, 12)), [0, 0, 11, 9])
