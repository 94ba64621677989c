"""What a user gives: 3D boxes (``--boxes``, Slicer ROIs) and clicks (``--points``, Slicer
fiducials), read, checked and turned into candidates for the refiner.

A box is half-open voxel indices ``[z0, z1, y0, y1, x0, x1]``; a click is a voxel ``[z, y, x]``
(``ijk`` key, array order like the boxes) or an LPS point in millimetres (``lps_mm``: ``[x, y,
z]``). How a box or a click becomes per-slice SAM prompts is ``refine.BoxRefiner``'s work.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from .boxes import Candidate
from .errors import NoduleSAMError
from .geometry import apply_matrix, clip_box3d


def _read_json_list(path: str | Path, keys: tuple[str, ...], example: str) -> list:
    """The first list found under ``keys`` in a JSON file, with one-line errors."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as err:
        raise NoduleSAMError(f"{path}: cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise NoduleSAMError(f"{path}: not UTF-8 text; expected JSON like {example}") from None
    except json.JSONDecodeError as err:
        raise NoduleSAMError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); "
                             f"expected {example}") from None
    for key in keys:
        if isinstance(data, dict) and isinstance(data.get(key), list):
            return data[key]
    raise NoduleSAMError(f"{path}: expected {example}")


def _numbers(entry, key: str, count: int, what: str) -> list[float]:
    """``entry[key]`` as ``count`` finite numbers, else a one-line error naming ``what``."""
    if not isinstance(entry, dict):
        raise NoduleSAMError(f"{what}: each entry must be an object like "
                             f"{{\"name\": ..., \"{key}\": [...]}}, got {json.dumps(entry)[:60]}")
    values = entry.get(key)
    ok = (isinstance(values, list) and len(values) == count
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  for v in values))
    if not ok:
        raise NoduleSAMError(f"{what}: '{key}' must be {count} finite numbers, got "
                             f"{json.dumps(values)[:60]}")
    return [float(v) for v in values]


BOXES_EXAMPLE = '{"boxes": [{"name": "Nodule 1", "ijk": [z0, z1, y0, y1, x0, x1]}]}'
POINTS_EXAMPLE = ('{"points": [{"name": "Nodule 1", "ijk": [z, y, x]}]} '
                  '(or "lps_mm": [x, y, z] instead of "ijk")')


def read_boxes_json(path: str | Path) -> list[dict]:
    """The ``boxes`` list of a boxes JSON, or the ``nodules`` list of a NoduleSAM report."""
    return _read_json_list(path, ("boxes", "nodules"), BOXES_EXAMPLE)


def read_points_json(path: str | Path) -> list[dict]:
    """The ``points`` list of a points JSON."""
    return _read_json_list(path, ("points",), POINTS_EXAMPLE)


def candidates_from_boxes(boxes: list, shape_zyx) -> tuple[list[Candidate], list[str]]:
    """Candidates from given 3D boxes (``{"name": ..., "ijk": [z0, z1, y0, y1, x0, x1]}``).

    Boxes reaching outside the volume are clipped (with a message); boxes with no voxel inside it,
    or empty, are rejected with a message. A malformed entry is an error. Returns the
    candidates and the messages.
    """
    candidates, messages = [], []
    for number, entry in enumerate(boxes, start=1):
        name = str(entry.get("name") or f"Nodule {number}") if isinstance(entry, dict) else f"box {number}"
        ijk = tuple(int(round(v)) for v in _numbers(entry, "ijk", 6, f"box '{name}'"))
        clipped = clip_box3d(ijk, shape_zyx)
        if clipped is None:
            messages.append(f"box '{name}' {list(ijk)} is empty or outside the volume "
                            f"{list(shape_zyx)} (z, y, x): skipped")
            continue
        if clipped != ijk:
            messages.append(f"box '{name}' {list(ijk)} reached outside the volume: clipped to "
                            f"{list(clipped)}")
        candidates.append(Candidate(name, clipped, source="given box"))
    return candidates, messages


def candidates_from_points(points: list, ijk_to_lps: np.ndarray,
                           shape_zyx) -> tuple[list[Candidate], list[str]]:
    """Candidates from clicks (``{"name": ..., "ijk": [z, y, x]}`` or ``"lps_mm": [x, y, z]``).

    An LPS point goes to the nearest voxel through the volume's ``ijk_to_lps`` matrix. A click
    outside the volume is skipped with a message. Each candidate's box is the clicked voxel
    alone until the refiner proposes the nodule's box (``BoxRefiner.box_from_click``).
    """
    candidates, messages = [], []
    for number, entry in enumerate(points, start=1):
        name = str(entry.get("name") or f"Nodule {number}") if isinstance(entry, dict) else f"point {number}"
        what = f"point '{name}'"
        if isinstance(entry, dict) and "lps_mm" in entry and "ijk" not in entry:
            lps = _numbers(entry, "lps_mm", 3, what)
            ijk = apply_matrix(np.linalg.inv(ijk_to_lps), np.array(lps))
            zyx = tuple(int(round(v)) for v in ijk[::-1])
            given = f"LPS {[round(v, 1) for v in lps]} mm (voxel {list(zyx)})"
        else:
            zyx = tuple(int(round(v)) for v in _numbers(entry, "ijk", 3, what))
            given = f"voxel {list(zyx)}"
        if not all(0 <= v < n for v, n in zip(zyx, shape_zyx)):
            messages.append(f"{what} at {given} is outside the volume {list(shape_zyx)} "
                            "(z, y, x): skipped")
            continue
        z, y, x = zyx
        candidates.append(Candidate(name, (z, z + 1, y, y + 1, x, x + 1), source="click",
                                    click_zyx=zyx))
    return candidates, messages


def solid_seed(hu_box: np.ndarray, threshold_hu: float, centre_zyx=None) -> np.ndarray:
    """The nodule's dense core in a box: a 3D component of voxels above a HU threshold.

    hu_box: HU ``[z, y, x]`` of the box. The threshold is ``threshold_hu``, lowered to the middle
    of the box's 10th and 95th HU percentiles when that is lower (a ground-glass nodule is
    fainter than -500 HU). Of the components (26-connected), the one containing ``centre_zyx``
    (box-relative voxel; default the box's centre) wins; when none does, the one with the most
    voxels for its distance from it (``size / (1 + 4 d^2)``, d in half box sizes). Returns a bool
    mask shaped like the box, empty when nothing is dense enough.
    """
    return _component_near(_dense(hu_box, threshold_hu), centre_zyx)


def _dense(hu: np.ndarray, threshold_hu: float) -> np.ndarray:
    """Voxels above ``threshold_hu``, or above the middle of the 10th and 95th HU percentiles
    when that is lower (see ``solid_seed``)."""
    low, high = np.percentile(hu, [10, 95])
    return hu > min(threshold_hu, (low + high) / 2.0)


def _component_near(dense: np.ndarray, centre_zyx=None) -> np.ndarray:
    """The 26-connected component of ``dense`` chosen as ``solid_seed`` describes."""
    labels, count = ndimage.label(dense, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return dense
    half = np.maximum(np.array(dense.shape, float) / 2.0, 0.5)
    centre = half - 0.5 if centre_zyx is None else np.asarray(centre_zyx, float)
    inside = labels[tuple(np.clip(np.round(centre).astype(int), 0, np.array(dense.shape) - 1))]
    if inside:
        return labels == inside
    grid = np.indices(dense.shape, dtype=np.float32)
    d2 = sum(((grid[a] - centre[a]) / half[a]) ** 2 for a in range(3))
    index = np.arange(1, count + 1)
    sizes = ndimage.sum(dense, labels, index)
    nearest = ndimage.minimum(d2, labels, index)
    return labels == index[int(np.argmax(sizes / (1.0 + 4.0 * nearest)))]


ATTACHMENT_FRACTION = 0.5


def cut_attachments(mask: np.ndarray, spacing_zyx_mm, fraction: float = ATTACHMENT_FRACTION) -> np.ndarray:
    """``mask`` without the parts thinner than ``fraction`` of its thickest point: a vessel or a
    denser structure that a loose box let the refinement take in.

    mask: bool ``[z, y, x]`` of a box; spacing_zyx_mm: its voxel spacing. A morphological
    opening with a ball of radius ``r = fraction x`` the mask's largest inscribed radius (mm, by
    Euclidean distance transforms, so it costs the same for a 9 cm tumour), keeping the opened
    component nearest the box centre (``solid_seed``'s rule), then giving back the part of
    ``mask`` within ``r`` of it (the rim the opening rounded off, not the attachments). On 20
    `val` VOIs (BENCHMARKS.md) it took a + 25 % box from 3D Dice 0.772 to 0.796 and left tight
    boxes as they were (0.845). In voxels instead of mm it ate the end slices of nodules only
    three 2.5 mm slices deep.
    """
    if not mask.any():
        return mask
    spacing = np.asarray(spacing_zyx_mm, float)
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    radius = fraction * float(depth.max())
    core = depth > radius
    if not core.any():
        return mask
    opened = ndimage.distance_transform_edt(~core, sampling=spacing) <= radius
    kept = _component_near(opened & mask)
    return mask & (ndimage.distance_transform_edt(~kept, sampling=spacing) <= radius)


CLICK_SCALES_MM = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0, 13.0)
# Tried only where the strongest blob is at the largest of CLICK_SCALES_MM (a tumour)
CLICK_TUMOUR_SCALES_MM = (16.0, 20.0, 25.0, 32.0)
CLICK_SEARCH_MM = 3.0
CLICK_MIN_RESPONSE = 10.0


def _strongest_blob(hu, spacing, click, scales_mm, search_mm, in_plane: bool):
    """The scale-normalised LoG's strongest blob within ``search_mm`` of the click, on a window
    of ``hu`` around it: (response, scale in mm, peak voxel). ``in_plane``: the 2D LoG of the
    click's slice (sigma 0 across slices), else the 3D LoG.

    Where the smallest scale spans several voxels (the tumour scales on thin slices), the window
    is first averaged over blocks of about a quarter of that scale, so that a 32 mm scale on a
    1 mm CT costs no more than a small nodule's. Otherwise each scale reads only the part of the
    window that its Gaussian (scipy's 4 sigma) reaches from the voxels near the click: the same
    responses to the last bit as on the whole window, in a fraction of the time for small
    scales."""
    click = np.asarray(click, int)
    block = np.maximum(np.floor(min(scales_mm) / 4.0 / spacing), 1).astype(int)
    if in_plane:
        block[0] = 1
    reach = np.ceil((3.0 * max(scales_mm) + search_mm) / spacing).astype(int)
    lo, hi = np.maximum(click - reach, 0), np.minimum(click + reach + 1, np.array(hu.shape))
    if in_plane:
        lo[0], hi[0] = click[0], click[0] + 1
    window = np.clip(hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], -1000.0, 200.0).astype(np.float32)
    if (block > 1).any():
        hi = lo + np.maximum((hi - lo) // block, 1) * block
        cut = window[:hi[0] - lo[0], :hi[1] - lo[1], :hi[2] - lo[2]]
        coarse = cut.reshape(cut.shape[0] // block[0], block[0], cut.shape[1] // block[1], block[1],
                             cut.shape[2] // block[2], block[2]).mean(axis=(1, 3, 5))
        response, scale, at = _strongest_blob_on(coarse, spacing * block, (click - lo) // block,
                                                 scales_mm, search_mm, in_plane, block)
        return response, scale, np.minimum(at * block + block // 2, hi - lo - 1) + lo
    best = (-np.inf, None, None)
    for scale in scales_mm:  # each on the part of the window its response near the click reads
        need = np.array([int(4.0 * scale / sp + 0.5) for sp in spacing]) + np.ceil(search_mm / spacing).astype(int)
        part_lo = np.maximum(click - np.minimum(need, reach), lo) - lo
        part_hi = np.minimum(click + np.minimum(need, reach) + 1, hi) - lo
        if in_plane:
            part_lo[0], part_hi[0] = 0, 1
        part = window[part_lo[0]:part_hi[0], part_lo[1]:part_hi[1], part_lo[2]:part_hi[2]]
        response, _, at = _strongest_blob_on(part, spacing, click - lo - part_lo, (scale,), search_mm, in_plane)
        if response > best[0]:
            best = (response, scale, at + part_lo + lo)
    return best


def _laplace(image, sigma, block):
    """The Gaussian Laplacian of ``image`` in the voxels of the grid ``block`` times finer (each
    axis's second derivative divided by its block squared), so that a block-averaged window's
    response compares with the full-resolution one's."""
    if (block == 1).all():
        return ndimage.gaussian_laplace(image, sigma=sigma, mode="nearest")
    total = np.zeros(image.shape, np.float32)
    for axis in range(image.ndim):
        order = [0] * image.ndim
        order[axis] = 2
        total += ndimage.gaussian_filter(image, sigma, order=order, mode="nearest") / float(block[axis]) ** 2
    return total


def _strongest_blob_on(window, spacing, click, scales_mm, search_mm, in_plane: bool, block=None):
    """``_strongest_blob`` on the whole of ``window`` (click and peak in its voxels); ``window``
    is ``hu`` averaged over blocks of ``block`` voxels (default 1; ``spacing`` is the blocks')."""
    block = np.ones(3, int) if block is None else np.asarray(block)
    grid = np.indices(window.shape, dtype=np.float32)
    near = np.sqrt(sum(((grid[a] - click[a]) * spacing[a]) ** 2 for a in range(3))) <= search_mm
    near[tuple(np.minimum(click, np.array(window.shape) - 1))] = True  # a coarse grid may hold no other
    best = (-np.inf, None, None)
    for scale in scales_mm:
        if in_plane:  # the slice as a 2D image (a zero sigma would not differentiate along z)
            response = _laplace(window[0], scale / spacing[1:], block[1:])[None]
        else:
            response = _laplace(window, scale / spacing, block)
        response = np.where(near, -scale * scale * response, -np.inf)
        at = np.unravel_index(int(np.argmax(response)), response.shape)
        if response[at] > best[0]:
            best = (float(response[at]), scale, np.asarray(at))
    return best


def box_from_click(hu: np.ndarray, spacing_zyx_mm, click_zyx, scales_mm=CLICK_SCALES_MM,
                   search_mm: float = CLICK_SEARCH_MM, tumour_scales_mm=CLICK_TUMOUR_SCALES_MM
                   ) -> tuple[int, int, int, int, int, int]:
    """The 3D box a click proposes: the blob at the click, sized by a multiscale LoG.

    The scale-normalised Laplacian of Gaussian (``-s^2 LoG``, HU clipped to [-1000, 200]) is
    computed at the ``scales_mm`` (Gaussian sigma in mm, per axis through the spacing) on a
    window around the click; the strongest response within ``search_mm`` of the click gives the
    blob's centre and scale ``s``, and the box is that centre +- ``sqrt(3) s`` (a ball's radius
    at the scale where its response peaks). A vessel touching the nodule barely changes the
    response, where it joined the old box's dense component (on 20 `val` VOIs, a click at the
    centroid: 3D Dice 0.66 with that box, 0.78 with this one; BENCHMARKS.md). Where no blob
    answers (response below ``CLICK_MIN_RESPONSE``), the box is the click +- 5 mm. Always holds
    the clicked voxel.

    A volume only a few slices deep (a crop) cannot hold the 3D blob: the nodule looks like a
    cylinder there and a small texture peak wins (LIDC-IDRI-0001's 33 mm nodule on 3 slices:
    Dice 0.07). So the in-plane 2D LoG of the clicked slice is computed first; where its disc's
    radius (``sqrt(2) s`` at its peak scale) is more than the volume's depth, the box is that
    disc's square on every slice of the volume.

    Where the strongest blob is at the largest of ``scales_mm`` (the response still growing: a
    tumour), the larger ``tumour_scales_mm`` are tried too, on a block-averaged window, and the
    stronger answer is kept (NSCLC-Radiomics LUNG1-002's 103 mm tumour: the box's IoU with the
    tumour's box 0.16 -> 0.49; BENCHMARKS.md). Elsewhere the box is as without them.
    """
    shape = np.array(hu.shape)
    spacing = np.asarray(spacing_zyx_mm, float)
    click = np.asarray(click_zyx, int)

    def blob(in_plane):
        best = _strongest_blob(hu, spacing, click, scales_mm, search_mm, in_plane)
        if best[1] == max(scales_mm) and tumour_scales_mm:
            larger = _strongest_blob(hu, spacing, click, tumour_scales_mm, search_mm, in_plane)
            best = larger if larger[0] > best[0] else best
        return best

    response, scale, at = blob(in_plane=True)
    thin = response >= CLICK_MIN_RESPONSE and np.sqrt(2.0) * scale > shape[0] * spacing[0]
    if thin:
        radius = np.sqrt(2.0) * scale / spacing
        radius[0] = shape[0]
    else:
        response, scale, at = blob(in_plane=False)
        radius = np.sqrt(3.0) * scale / spacing
    if response < CLICK_MIN_RESPONSE:
        half = np.maximum(np.round(5.0 / spacing), 1).astype(int)
        return clip_box3d(tuple(int(v) for pair in zip(click - half, click + half + 1) for v in pair),
                          tuple(shape))
    low = np.minimum(np.maximum(np.floor(at - radius).astype(int), 0), click)
    high = np.maximum(np.minimum(np.ceil(at + radius + 1).astype(int), shape), click + 1)
    return tuple(int(v) for pair in zip(low, high) for v in pair)
