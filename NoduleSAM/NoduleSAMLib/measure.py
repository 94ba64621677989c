"""Measurements of one nodule mask: volume, axial long/short axis, mean HU, centroid."""
from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial.distance import pdist, squareform

from .volume import CTVolume


def axial_diameters_mm(mask2d: np.ndarray, spacing_yx_mm) -> tuple[float, float]:
    """Longest in-plane diameter of a 2D mask and the longest chord perpendicular to it (mm).

    Diameters run between outer-contour points (pixel centres, as LIDC's diameters do); the short
    axis is the mask's extent across the long axis' direction.
    """
    contours, _ = cv2.findContours(mask2d.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return 0.0, 0.0
    points = np.concatenate(contours)[:, 0, :].astype(float) * [spacing_yx_mm[1], spacing_yx_mm[0]]
    if len(points) < 2:
        return 0.0, 0.0
    distances = squareform(pdist(points))
    a, b = np.unravel_index(np.argmax(distances), distances.shape)
    long_mm = float(distances[a, b])
    across = np.array([-(points[b] - points[a])[1], (points[b] - points[a])[0]]) / long_mm
    ys, xs = np.nonzero(mask2d)
    projected = (np.column_stack([xs * spacing_yx_mm[1], ys * spacing_yx_mm[0]]) @ across)
    return long_mm, float(projected.max() - projected.min())


def measure_nodule(volume: CTVolume, mask: np.ndarray) -> dict:
    """Measurements of ``mask`` (bool, volume-shaped ``[z, y, x]``) on ``volume``.

    Long/short axis come from the axial slice where the long axis is largest (RECIST style).
    """
    spacing = volume.spacing_zyx_mm
    voxels = int(mask.sum())
    out = {"voxels": voxels, "volume_mm3": voxels * float(np.prod(spacing))}
    if voxels == 0:
        return out | {"long_axis_mm": 0.0, "short_axis_mm": 0.0, "mean_hu": None,
                      "centroid_ras_mm": None, "centroid_lps_mm": None, "long_axis_slice": None}
    best = (0.0, 0.0, None)
    for z in np.nonzero(mask.any(axis=(1, 2)))[0]:
        long_mm, short_mm = axial_diameters_mm(mask[z], spacing[1:])
        if long_mm > best[0]:
            best = (long_mm, short_mm, int(z))
    centroid_zyx = np.argwhere(mask).mean(axis=0)
    return out | {
        "long_axis_mm": best[0], "short_axis_mm": best[1], "long_axis_slice": best[2],
        "mean_hu": float(volume.hu[mask].mean()),
        "centroid_ras_mm": volume.zyx_to_ras(centroid_zyx).tolist(),
        "centroid_lps_mm": volume.zyx_to_lps(centroid_zyx).tolist(),
    }
