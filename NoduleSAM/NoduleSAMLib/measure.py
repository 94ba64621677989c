"""Measurements of one nodule mask: volume, axial long/short axis and mean diameter, mean HU,
centroid.

Diameters follow RECIST 1.1 and the Fleischner Society's 2017 recommendations: on the axial slice
where the nodule is longest, the long axis is its longest diameter and the short axis the longest
chord inside the nodule perpendicular to it; the mean diameter is their average (what Lung-RADS
and Fleischner use). They are measured on the nodule's largest 3D connected component and, on the
chosen slice, on that component's largest in-plane part, so a stray island never lengthens an
axis. Volume, mean HU and centroid are of the whole mask, as the segment shows it.

Pixel convention: edge to edge. Each pixel is its full rectangle (spacing x by spacing y), as on a
screen caliper, so a disk 10 pixels wide at 0.7 mm measures 7.0 mm across and a single pixel
measures one pixel's diagonal by its width.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage
from scipy.spatial.distance import pdist, squareform

from .volume import CTVolume

FULL_3D = np.ones((3, 3, 3), bool)  # 26-connected components in 3D
FULL_2D = np.ones((3, 3), bool)     # 8-connected in a slice


def largest_component(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """The largest connected component of a bool mask (all False when it is empty); connected
    as ``structure`` says (default: faces only, as ``scipy.ndimage.label``)."""
    labels, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def _pixel_corners_mm(mask2d: np.ndarray, spacing_yx_mm) -> np.ndarray:
    """The corners of the boundary pixels' rectangles, as (x, y) mm, pixel (0, 0) centred at 0."""
    boundary = mask2d & ~ndimage.binary_erosion(mask2d, FULL_2D)
    ys, xs = np.nonzero(boundary)
    corners = [np.column_stack([xs + dx, ys + dy]) for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)]
    return np.concatenate(corners).astype(float) * [spacing_yx_mm[1], spacing_yx_mm[0]]


def _longest_chord(mask2d: np.ndarray, spacing_yx_mm, direction: np.ndarray) -> float:
    """The longest segment perpendicular to ``direction`` (a unit (x, y) vector) that lies inside
    the mask's pixel rectangles, in mm.

    Along each line perpendicular to ``direction`` the length inside the rectangles is piecewise
    linear in the line's position, breaking only where the line meets a rectangle corner, so the
    lines through the boundary corners hold the exact maximum.
    """
    sy, sx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    across = np.array([-direction[1], direction[0]])
    ys, xs = np.nonzero(mask2d)
    centres = np.column_stack([xs * sx, ys * sy])
    half = np.array([sx / 2, sy / 2])
    reach = float(np.abs(direction) @ half)  # a rectangle's half extent along ``direction``
    along = centres @ direction
    order = np.argsort(along)
    along, centres = along[order], centres[order]
    best = 0.0
    for offset in np.unique(np.round(_pixel_corners_mm(mask2d, spacing_yx_mm) @ direction, 9)):
        lo, hi = np.searchsorted(along, [offset - reach - 1e-9, offset + reach + 1e-9])
        # where the line  offset * direction + t * across  enters and leaves each rectangle
        near = centres[lo:hi] - offset * direction
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (near - half) / across, (near + half) / across
        parallel = across == 0
        enter = np.where(parallel, -np.inf, np.minimum(t1, t2)).max(axis=1)
        leave = np.where(parallel, np.inf, np.maximum(t1, t2)).min(axis=1)
        hit = (enter <= leave + 1e-9) & np.all(~parallel | (np.abs(near) <= half + 1e-9), axis=1)
        if not hit.any():
            continue
        order = np.argsort(enter[hit])
        starts, ends = enter[hit][order], np.maximum.accumulate(leave[hit][order])
        # touching rectangles make one run; a run starts where an entry lies past all exits before
        first = np.flatnonzero(np.r_[True, starts[1:] > ends[:-1] + 1e-9])
        last = np.r_[first[1:] - 1, len(starts) - 1]
        best = max(best, float((ends[last] - starts[first]).max()))
    return best


def _long_axis(mask2d: np.ndarray, spacing_yx_mm) -> tuple[float, np.ndarray | None]:
    """The longest distance between two points of a 2D mask's pixel rectangles (mm), and its
    unit (x, y) direction."""
    if not mask2d.any():
        return 0.0, None
    corners = _pixel_corners_mm(mask2d, spacing_yx_mm)
    hull = corners[cv2.convexHull(corners.astype(np.float32), returnPoints=False)[:, 0]]
    distances = squareform(pdist(hull))
    a, b = np.unravel_index(np.argmax(distances), distances.shape)
    return float(distances[a, b]), (hull[b] - hull[a]) / distances[a, b]


def axial_diameters_mm(mask2d: np.ndarray, spacing_yx_mm) -> tuple[float, float]:
    """Long axis and perpendicular short axis of a 2D mask's largest part, in mm (edge to edge).

    Long axis: the longest distance between two points of the mask's pixel rectangles. Short
    axis: the longest chord inside the mask perpendicular to the long axis (RECIST/Fleischner),
    not the mask's width across it, which a C shape would inflate.
    """
    mask2d = largest_component(np.asarray(mask2d, bool), FULL_2D)
    long_mm, direction = _long_axis(mask2d, spacing_yx_mm)
    if direction is None:
        return 0.0, 0.0
    return long_mm, _longest_chord(mask2d, spacing_yx_mm, direction)


def measure_nodule(volume: CTVolume, mask: np.ndarray) -> dict:
    """Measurements of ``mask`` (bool, volume-shaped ``[z, y, x]``) on ``volume``.

    Long/short axis and mean diameter come from the axial slice where the largest component's
    long axis is longest (module docstring); ``components`` counts the mask's 3D parts.
    """
    spacing = volume.spacing_zyx_mm
    voxels = int(mask.sum())
    out = {"voxels": voxels, "volume_mm3": voxels * float(np.prod(spacing))}
    if voxels == 0:
        return out | {"long_axis_mm": 0.0, "short_axis_mm": 0.0, "mean_diameter_mm": 0.0,
                      "mean_hu": None, "centroid_ras_mm": None, "centroid_lps_mm": None,
                      "long_axis_slice": None, "components": 0}
    # everything below reads only the mask's bounding box: a whole CT is 100x a nodule's box
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    corner = np.array([b.start for b in box])
    mask = mask[box]
    labels, components = ndimage.label(mask, structure=FULL_3D)
    main = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    region = ndimage.find_objects(main.astype(np.uint8))[0]
    parts = {z: largest_component(main[z][region[1:]], FULL_2D)
             for z in range(region[0].start, region[0].stop)}
    axes = {z: _long_axis(part, spacing[1:]) for z, part in parts.items()}
    z = max(axes, key=lambda k: axes[k][0])
    long_mm, direction = axes[z]
    best = (long_mm, _longest_chord(parts[z], spacing[1:], direction), int(z + corner[0]))
    centroid_zyx = np.argwhere(mask).mean(axis=0) + corner
    return out | {
        "long_axis_mm": best[0], "short_axis_mm": best[1],
        "mean_diameter_mm": (best[0] + best[1]) / 2, "long_axis_slice": best[2],
        "components": int(components),
        "mean_hu": float(volume.hu[box][mask].mean()),
        "centroid_ras_mm": volume.zyx_to_ras(centroid_zyx).tolist(),
        "centroid_lps_mm": volume.zyx_to_lps(centroid_zyx).tolist(),
    }

