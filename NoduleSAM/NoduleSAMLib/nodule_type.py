"""Nodule type (solid / part-solid / ground-glass) from the HU inside the mask, and the solid
component's size.

Solid tissue is HU >= ``solid_hu``. The **solid fraction** is the share of the nodule's inner
voxels that are solid: the mask eroded by one voxel in each axial slice, so that the rim, where
partial volume with the surrounding lung makes any nodule look hazy, does not count; where the
erosion would leave under ``min_inner_fraction`` of the nodule (nodules a few voxels across)
the whole mask is used. Below ``ground_glass_below`` the nodule is ground-glass, from
``solid_from`` up solid, in between part-solid.

The thresholds were tuned on the LIDC-IDRI train and val VOIs (50 % consensus masks) against
the readers' texture median, maximising balanced accuracy plus Cohen's kappa; the test split's
numbers are in BENCHMARKS.md (``benchmarks/nodule_type.py``).

The **solid component** of a part-solid nodule is its solid voxels (the whole mask's, rim
included), measured like the nodule itself by ``measure.measure_nodule`` (largest 3D part,
RECIST long and short axis on its longest axial slice, mean diameter, volume).

Decision support for a radiologist, not a diagnosis: the radiologist judges the type on the
images (lung window), where calcification, vessels and the slice thickness matter.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .measure import measure_nodule
from .volume import CTVolume

IN_PLANE_CROSS = np.zeros((3, 3, 3), bool)  # 4-connected erosion within each axial slice
IN_PLANE_CROSS[1] = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class TypeSettings:
    """The classification's operating point (tuned on LIDC train + val; module docstring)."""

    solid_hu: float = -300.0
    ground_glass_below: float = 0.18
    solid_from: float = 0.56
    min_inner_fraction: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


def inner_voxels(mask: np.ndarray, min_inner_fraction: float) -> np.ndarray:
    """``mask`` eroded by one voxel in each axial slice, or ``mask`` itself where that keeps
    less than ``min_inner_fraction`` of it."""
    inner = ndimage.binary_erosion(mask, IN_PLANE_CROSS)
    count = int(inner.sum())
    return inner if count and count >= min_inner_fraction * mask.sum() else mask


def solid_fraction(hu: np.ndarray, mask: np.ndarray, settings: TypeSettings = TypeSettings()) -> float:
    """The share of the nodule's inner voxels with HU >= ``settings.solid_hu`` (0 for an empty
    mask). hu, mask: ``[z, y, x]`` arrays of one shape (mask bool)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return 0.0
    inner = inner_voxels(mask, settings.min_inner_fraction)
    return float((hu[inner] >= settings.solid_hu).mean())


def type_from_fraction(fraction: float, settings: TypeSettings = TypeSettings()) -> str:
    if fraction < settings.ground_glass_below:
        return "ground-glass"
    return "solid" if fraction >= settings.solid_from else "part-solid"


def classify_nodule(volume: CTVolume, mask: np.ndarray,
                    settings: TypeSettings = TypeSettings()) -> dict:
    """Type and solid component of the nodule ``mask`` (bool, ``[z, y, x]``, volume-shaped).

    Returns ``type`` (None for an empty mask), ``solid_fraction`` and, for part-solid nodules,
    the solid component's ``solid_component_long_axis_mm``, ``..._short_axis_mm``,
    ``..._mean_diameter_mm`` and ``..._volume_mm3`` (None otherwise).
    """
    mask = np.asarray(mask, bool)
    empty = {"solid_component_long_axis_mm": None, "solid_component_short_axis_mm": None,
             "solid_component_mean_diameter_mm": None, "solid_component_volume_mm3": None}
    if not mask.any():
        return {"type": None, "solid_fraction": None} | empty
    fraction = solid_fraction(volume.hu, mask, settings)
    kind = type_from_fraction(fraction, settings)
    out = {"type": kind, "solid_fraction": fraction} | empty
    if kind == "part-solid":
        solid = measure_nodule(volume, mask & (volume.hu >= settings.solid_hu))
        out |= {"solid_component_long_axis_mm": solid["long_axis_mm"],
                "solid_component_short_axis_mm": solid["short_axis_mm"],
                "solid_component_mean_diameter_mm": solid["mean_diameter_mm"],
                "solid_component_volume_mm3": solid["volume_mm3"]}
    return out


def classify_in_box(volume: CTVolume, box_ijk, mask: np.ndarray,
                    settings: TypeSettings = TypeSettings()) -> dict:
    """``classify_nodule`` of a nodule given as its box (half-open ``(z0, z1, y0, y1, x0, x1)``)
    and its mask inside the box (as ``pipeline.Nodule`` holds it), on that crop of ``volume``."""
    from .geometry import apply_matrix

    z0, z1, y0, y1, x0, x1 = box_ijk
    ijk_to_ras = volume.ijk_to_ras.copy()
    ijk_to_ras[:3, 3] = apply_matrix(volume.ijk_to_ras, [x0, y0, z0])
    crop = CTVolume(volume.hu[z0:z1, y0:y1, x0:x1], ijk_to_ras, volume.source)
    return classify_nodule(crop, mask, settings)
