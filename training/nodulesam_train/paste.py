"""Real LIDC nodules pasted in 3D into the lungs of a whole CT.

Used twice: to give the detector's evaluation more nodules than the held-out scans hold (VOIs of
the ``val`` or ``test`` split into held-out scans), and to give the candidate classifier positive
examples with real surroundings (``train`` VOIs into training scans).

A VOI's HU crop and 50 % consensus mask are resampled to the target CT's voxel size as a CT
forms a voxel (``on_grid``): each target voxel is the mean of the VOI over its extent, on a grid
centred on the nodule with a random sub-voxel phase. On 3-5 mm slices a small nodule thus keeps
its density, spread over the slice it falls in (partial volume). The earlier point-sampling
(``ndimage.zoom``, which aligns the crop's first voxels) put a VOI of a few thin slices onto one
sample at its edge, so some pasted nodules were labelled but not in the HU.
The mask is the resampled consensus fraction >= 0.5 (a nodule thinner than that everywhere keeps
the voxels of at least half its largest fraction). The nodule is placed at a random point such that the feathered
footprint lies wholly inside the lung fields and away from other lesions, and blended:
``out = alpha * voi + (1 - alpha) * ct``, with ``alpha`` = 1 on the mask and falling off over
about 2 mm around it. The pasted mask is written into the label map with its own value.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage


@dataclass
class VoiNodule:
    case_id: str
    hu: np.ndarray       # float32 [z, y, x]
    mask: np.ndarray     # bool, same grid
    spacing_zyx_mm: tuple
    diameter_mm: float
    texture: float | None


def read_voi(lidc_dir: Path, case: dict) -> VoiNodule:
    import SimpleITK as sitk

    folder = Path(lidc_dir) / "voi" / case["case_id"]
    image = sitk.ReadImage(str(folder / "image.nii.gz"))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "consensus50.nii.gz"))) > 0
    sx, sy, sz = image.GetSpacing()
    texture = float(case["texture_median"]) if case.get("texture_median") else None
    return VoiNodule(case["case_id"], sitk.GetArrayFromImage(image).astype(np.float32), mask,
                     (sz, sy, sx), float(case.get("diameter_mm") or 0.0), texture)


def on_grid(nodule: VoiNodule, spacing_zyx_mm, phase=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """The VOI's HU and consensus fraction on a grid of the target voxel size, as a CT forms its
    voxels: each is the mean of the VOI over its extent (sampled linearly at sub-voxel steps along
    every axis where the target is coarser). The grid is centred on the nodule, shifted by
    ``phase`` target voxels (a real scan's slices fall anywhere on a nodule); outside the VOI its
    edge HU continue."""
    source = np.asarray(nodule.spacing_zyx_mm, float)
    target = np.asarray(spacing_zyx_mm, float)
    count = np.maximum(1, np.ceil(np.array(nodule.hu.shape) * source / target)).astype(int)
    centre = (np.argwhere(nodule.mask).mean(axis=0) if nodule.mask.any()
              else (np.array(nodule.hu.shape) - 1) / 2)
    positions, offsets = [], []
    for axis in range(3):
        steps = np.arange(count[axis]) - (count[axis] - 1) / 2 + phase[axis]
        positions.append(centre[axis] + steps * target[axis] / source[axis])
        sub = int(np.ceil(target[axis] / source[axis])) if target[axis] > source[axis] else 1
        offsets.append((((np.arange(sub) + 0.5) / sub - 0.5) * target[axis] / source[axis]) if sub > 1 else [0.0])
    mask = nodule.mask.astype(np.float32)
    hu_sum = np.zeros(count, np.float64)
    fraction_sum = np.zeros(count, np.float64)
    shifts = [(a, b, c) for a in offsets[0] for b in offsets[1] for c in offsets[2]]
    for dz, dy, dx in shifts:
        grid = np.meshgrid(positions[0] + dz, positions[1] + dy, positions[2] + dx, indexing="ij")
        hu_sum += ndimage.map_coordinates(nodule.hu, grid, order=1, mode="nearest")
        fraction_sum += ndimage.map_coordinates(mask, grid, order=1, mode="constant", cval=0.0)
    return (hu_sum / len(shifts)).astype(np.float32), (fraction_sum / len(shifts)).astype(np.float32)


def resampled(nodule: VoiNodule, spacing_zyx_mm, phase=(0.0, 0.0, 0.0)
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nodule on the target voxel size (``on_grid``): HU, mask and blending alpha (all
    cropped to the alpha's support)."""
    hu, fraction = on_grid(nodule, spacing_zyx_mm, phase)
    mask = fraction >= 0.5
    if not mask.any():  # thinner than half a target voxel everywhere
        mask = fraction >= 0.5 * fraction.max() if fraction.max() > 0 else mask
    feather_vox = np.maximum(1.0 / np.asarray(spacing_zyx_mm, float), 0.3)  # about 1 mm
    support = ndimage.binary_dilation(mask, iterations=1)
    alpha = np.clip(ndimage.gaussian_filter(support.astype(np.float32), feather_vox), 0, 1)
    alpha[mask] = 1.0
    foot = alpha > 0.02
    if not foot.any():
        return hu[:0], mask[:0], alpha[:0]
    region = ndimage.find_objects(foot.astype(np.uint8))[0]
    return hu[region], mask[region], alpha[region]


def paste(hu: np.ndarray, labels: np.ndarray, allowed: np.ndarray, value: int, nodule: VoiNodule,
          spacing_zyx_mm, rng: np.random.Generator, places: np.ndarray | None = None,
          tries: int = 200) -> tuple[float, float, float] | None:
    """Paste ``nodule`` into ``hu``/``labels`` (in place) at a random point of ``allowed``.

    allowed: bool ``[z, y, x]``, where the footprint may lie; updated so later pastes keep away.
    places: candidate centres (``np.argwhere(allowed)``, possibly thinned) to draw from.
    Returns the pasted mask's centroid (voxel ``z, y, x``) or None if no place fitted.
    """
    src, mask, alpha = resampled(nodule, spacing_zyx_mm, rng.uniform(-0.5, 0.5, 3))
    if not mask.any():
        return None
    foot = alpha > 0.02
    shape = np.array(src.shape)
    places = np.argwhere(allowed) if places is None else places
    if not len(places):
        return None
    for _ in range(tries):
        centre = places[rng.integers(len(places))]
        start = centre - shape // 2
        stop = start + shape
        if (start < 0).any() or (stop > np.array(hu.shape)).any():
            continue
        region = tuple(slice(a, b) for a, b in zip(start, stop))
        if not allowed[region][foot].all():
            continue
        target = hu[region].astype(np.float32)
        hu[region] = np.round(alpha * src + (1 - alpha) * target).astype(hu.dtype)
        labels[region][mask] = value
        keep_out = ndimage.binary_dilation(foot, iterations=3)
        allowed[region][keep_out] = False
        return tuple(float(v) for v in np.argwhere(mask).mean(axis=0) + start)
    return None


def pasted_copies(hu: np.ndarray, labels: np.ndarray, spacing_zyx_mm, nodules, per_copy: int,
                  rng: np.random.Generator):
    """Copies of a CT with ``nodules`` (a list of ``(label value, VoiNodule)``) pasted into its
    lungs, ``per_copy`` to a copy. Yields ``(hu, labels, placed)`` per copy, ``placed`` being the
    ``(value, nodule)`` pairs that fitted (in ``labels`` with their value)."""
    allowed_base = paste_allowed(hu, labels, spacing_zyx_mm)
    places = np.argwhere(allowed_base[:, ::4, ::4]) * [1, 4, 4]
    for start in range(0, len(nodules), per_copy):
        canvas, copy_labels, allowed = hu.copy(), labels.copy(), allowed_base.copy()
        placed = [(value, nodule) for value, nodule in nodules[start:start + per_copy]
                  if paste(canvas, copy_labels, allowed, value, nodule, spacing_zyx_mm, rng, places) is not None]
        yield canvas, copy_labels, placed


def paste_allowed(hu: np.ndarray, labels: np.ndarray, spacing_zyx_mm, margin_mm: float = 4.0) -> np.ndarray:
    """Where pasted nodules may lie: the lung fields (vessels included, so a pasted nodule may
    touch one) shrunk by ``margin_mm``, and at least 10 mm from any labelled voxel (the scan's
    own lesions, ignored ones included)."""
    from NoduleSAMLib.lungs import lung_mask

    lungs = lung_mask(hu, spacing_zyx_mm)
    spacing = np.asarray(spacing_zyx_mm, float)
    inside = ndimage.distance_transform_edt(lungs, sampling=spacing) > margin_mm
    if labels.any():
        inside &= ndimage.distance_transform_edt(labels == 0, sampling=spacing) > 10.0
    return inside
