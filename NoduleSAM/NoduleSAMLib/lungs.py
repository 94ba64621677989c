"""A coarse lung-field mask from HU, to drop detector candidates outside the lungs.

Air inside the body (HU < -400, not connected to the air around the patient) on each axial slice,
kept where it forms large 3D regions (the lungs, not bowel gas), with holes filled (vessels,
nodules) and closed by about 10 mm so nodules touching the pleura stay inside.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

AIR_HU = -400.0
CLOSING_MM = 10.0
MIN_FRACTION_OF_LARGEST = 0.1
STEP = 4  # the mask is built on every 4th pixel in-plane: it only has to be coarse
MIN_FIELD_OF_VIEW_MM = 200.0  # a whole chest cross-section; crops and VOIs are far smaller


def shows_whole_chest(shape_zyx, spacing_zyx_mm) -> bool:
    """Whether the slices are wide enough to hold the whole chest, air around it included.

    The lung mask needs that air to tell the lungs from the outside; on a crop it means nothing.
    """
    return min(shape_zyx[1] * spacing_zyx_mm[1], shape_zyx[2] * spacing_zyx_mm[2]) >= MIN_FIELD_OF_VIEW_MM


def lung_mask(hu: np.ndarray, spacing_zyx_mm) -> np.ndarray:
    """Bool ``[z, y, x]`` lung fields of a chest CT (coarse; for gating candidates only)."""
    small = hu[:, ::STEP, ::STEP] < AIR_HU
    inside = np.zeros_like(small)
    for z, air in enumerate(small):
        labels, _ = ndimage.label(air)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        inside[z] = air & ~np.isin(labels, border)
    labels, count = ndimage.label(inside)
    if count:
        sizes = ndimage.sum_labels(inside, labels, index=np.arange(1, count + 1))
        keep = np.nonzero(sizes >= MIN_FRACTION_OF_LARGEST * sizes.max())[0] + 1
        inside = np.isin(labels, keep)
    radius_px = max(1, int(round(CLOSING_MM / (spacing_zyx_mm[1] * STEP))))
    disk = np.hypot(*np.mgrid[-radius_px:radius_px + 1, -radius_px:radius_px + 1]) <= radius_px
    for z in range(inside.shape[0]):
        if inside[z].any():
            closed = ndimage.binary_closing(np.pad(inside[z], radius_px), disk)
            inside[z] = ndimage.binary_fill_holes(closed[radius_px:-radius_px, radius_px:-radius_px])
    full = np.repeat(np.repeat(inside, STEP, axis=1), STEP, axis=2)
    return full[:, : hu.shape[1], : hu.shape[2]]
