"""A second candidate generator: round blobs in the lungs, found by a multi-scale Hessian filter.

The 2D detector misses many small nodules on scanners it has not seen (docs/evaluation.md).
Classical lung CAD finds candidates with a "dot" filter instead (Li, Sone and Doi, Med Phys
2003): at a blob's centre all three eigenvalues of the Hessian of the smoothed CT are negative
and of similar size, while along a vessel one of them is near zero. The filter's response
``|l3|^2 / |l1|`` (``|l1| >= |l2| >= |l3|``, all negative; scale-normalised) is computed inside
the lung fields at a few scales on an isotropic grid, and its local maxima become candidates.
They are many (about four hundred per scan) and mostly vessel crossings, so they are only useful
with the candidate classifier (``fpr.py``), which scores them with the detector's candidates.
The thresholds were chosen on the ``val`` FROC of the held-out scans (BENCHMARKS.md): lowering
the response threshold from 20 to 10 and the centre HU from -500 to -600 found 0.905 of the
lesions at any score instead of 0.81, and raised the CPM.

Each blob becomes a ``boxes.Candidate`` whose mask is the voxels above ``MASK_HU`` within the
blob's radius (``sqrt(3) x`` the best scale, the radius of a ball that peaks at that scale) and
connected to its centre. Blobs that touch a detector candidate are dropped, since the detector's
own candidate, with its probability map, is the better one; only the detector candidates that
passed the filters count (a blob on a nodule whose detection was filtered out is kept).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .boxes import Candidate, component_boxes
from .geometry import clip_box3d

STEP_MM = 1.5                  # the isotropic grid of the filter
SCALES_MM = (1.5, 2.5, 4.0)    # Gaussian scales: blobs of about 5-14 mm across
MIN_RESPONSE = 10.0            # on the validation scans: ~400 maxima per scan (BENCHMARKS.md)
MASK_HU = -600.0
MIN_CENTRE_HU = -600.0         # a blob's centre voxel must be above it (and above MASK_HU)
RULE = "2"                     # changes whenever the candidates change (cached training cubes)


def dot_response(hu: np.ndarray, spacing_zyx_mm, lungs: np.ndarray):
    """The filter on the isotropic grid: (response, best scale in mm). A grid voxel's place in
    the volume is ``grid_to_volume``'s."""
    factors = np.asarray(spacing_zyx_mm, float) / STEP_MM
    grid = ndimage.zoom(np.clip(hu, -1000, 200).astype(np.float32), factors, order=1)
    inside = ndimage.zoom(lungs.astype(np.uint8), factors, order=0)[: grid.shape[0], : grid.shape[1], : grid.shape[2]] > 0
    best = np.zeros(grid.shape, np.float32)
    best_scale = np.zeros(grid.shape, np.float32)
    if not inside.any():
        return best, best_scale
    # The filters run on the lungs' bounding box and the reach of the widest Gaussian around it
    # (scipy truncates at 4 sigma): inside the lungs the same numbers as on the whole grid, in a
    # third of the time on a wide field of view.
    reach = int(np.ceil(4.0 * max(SCALES_MM) / STEP_MM)) + 1
    box = tuple(slice(max(0, b.start - reach), b.stop + reach)
                for b in ndimage.find_objects(inside.astype(np.uint8))[0])
    grid, inside = grid[box], inside[box]
    where = np.nonzero(inside)
    found, found_scale = best[box], best_scale[box]  # views: written in place
    for scale_mm in SCALES_MM:
        sigma = scale_mm / STEP_MM
        hessian = np.empty((len(where[0]), 3, 3), np.float32)
        for a in range(3):
            for b in range(a, 3):
                order = [0, 0, 0]
                order[a] += 1
                order[b] += 1
                hessian[:, a, b] = hessian[:, b, a] = ndimage.gaussian_filter(grid, sigma, order=order)[where]
        # three negative eigenvalues need a negative trace: only those voxels are decomposed
        dark = np.flatnonzero(np.trace(hessian, axis1=1, axis2=2) < 0)
        eig = np.linalg.eigvalsh(hessian[dark])  # ascending: eig[:, 0] is the most negative
        response = np.zeros(len(hessian), np.float32)
        response[dark] = np.where(eig[:, 2] < 0, eig[:, 2] ** 2 / np.maximum(np.abs(eig[:, 0]), 1e-6), 0) * sigma ** 2
        better = response > found[where]
        chosen = tuple(axis[better] for axis in where)
        found[chosen] = response[better]
        found_scale[chosen] = scale_mm
    return best, best_scale


def grid_to_volume(point, grid_shape, volume_shape) -> np.ndarray:
    """The volume voxel nearest to a voxel of ``dot_response``'s grid. ``ndimage.zoom`` puts the
    first and last voxel centres of both grids on each other, so grid index ``i`` lies at volume
    index ``i (n - 1) / (m - 1)``, not at ``i / factor``: on 3-5 mm slices that rounding error
    put a blob's centre on the slice next to a one-slice nodule, in the air (BENCHMARKS.md)."""
    volume_shape, grid_shape = np.asarray(volume_shape), np.asarray(grid_shape)
    scale = (volume_shape - 1) / np.maximum(grid_shape - 1, 1)
    return np.round(np.asarray(point) * scale).astype(int)


def blob_candidates(hu: np.ndarray, spacing_zyx_mm, lungs: np.ndarray, avoid: np.ndarray | None = None,
                    min_response: float = MIN_RESPONSE, pad_px: float = 2.0) -> list[Candidate]:
    """Candidates at the dot filter's local maxima inside ``lungs`` (bool ``[z, y, x]``).

    avoid: bool ``[z, y, x]``; a blob whose mask touches it is dropped (the detector's masks).
    Candidates come unnamed and unsorted, with ``blob_response`` = the filter's response and
    ``score`` None until the classifier scores them.
    """
    response, scale = dot_response(hu, spacing_zyx_mm, lungs)
    peaks = (response == ndimage.maximum_filter(response, 5)) & (response > min_response)
    spacing = np.asarray(spacing_zyx_mm, float)
    out = []
    for point in np.argwhere(peaks):
        centre = grid_to_volume(point, response.shape, hu.shape)
        if hu[tuple(centre)] < MIN_CENTRE_HU:
            continue
        radius_mm = np.sqrt(3) * float(scale[tuple(point)])
        half = np.ceil(radius_mm / spacing).astype(int)
        box = clip_box3d((centre[0] - half[0], centre[0] + half[0] + 1, centre[1] - half[1],
                          centre[1] + half[1] + 1, centre[2] - half[2], centre[2] + half[2] + 1), hu.shape)
        z0, z1, y0, y1, x0, x1 = box
        zz, yy, xx = np.ogrid[z0:z1, y0:y1, x0:x1]
        ball = (((zz - centre[0]) * spacing[0]) ** 2 + ((yy - centre[1]) * spacing[1]) ** 2
                + ((xx - centre[2]) * spacing[2]) ** 2) <= radius_mm ** 2
        labels, _ = ndimage.label(ball & (hu[z0:z1, y0:y1, x0:x1] > MASK_HU))
        label = labels[tuple(centre - [z0, y0, x0])]
        if label == 0:  # the centre itself is not above MASK_HU
            continue
        mask = labels == label
        if avoid is not None and avoid[z0:z1, y0:y1, x0:x1][mask].any():
            continue
        out.append(_candidate(mask, (z0, y0, x0), hu.shape, spacing, float(response[tuple(point)]), pad_px))
    return out


def _candidate(mask, offset, shape, spacing, response, pad_px) -> Candidate:
    """A candidate of a blob's mask (placed at ``offset``), boxed like a detected component."""
    slice_boxes, box_ijk = component_boxes(mask, offset, shape, 0.0, pad_px)
    z0, z1, y0, y1, x0, x1 = box_ijk
    full = np.zeros((z1 - z0, y1 - y0, x1 - x0), bool)
    points = np.argwhere(mask) + np.asarray(offset) - [z0, y0, x0]  # inside: the box holds every slice box
    full[tuple(points.T)] = True
    volume_mm3 = float(mask.sum() * np.prod(spacing))
    return Candidate("", box_ijk, None, slice_boxes, volume_mm3, full, source="blob filter",
                     blob_response=response)
