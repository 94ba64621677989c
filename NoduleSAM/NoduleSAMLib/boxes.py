"""Candidates: 3D boxes with per-slice 2D prompt boxes, from a detector mask or from outside.

A candidate's 3D box bounds everything refinement may paint for it; its per-slice boxes are the
SAM prompts taken from the detector mask's OpenCV contours, enlarged by the expansion.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

from .geometry import clip_box3d, expand_box2d
from .settings import CandidateSettings

# Defaults: settings.CandidateSettings (their one home, with the reasons).
MIN_VOLUME_MM3 = CandidateSettings.min_volume_mm3
EXPANSION = CandidateSettings.expansion
PAD_PX = CandidateSettings.pad_px
MIN_DEPTH_RATIO = CandidateSettings.min_depth_ratio
DENSE_HU = -500.0       # nodule tissue for the depth of a detection (depth_ratio)


@dataclass
class Candidate:
    """One nodule to refine.

    box_ijk: half-open voxel box ``(z0, z1, y0, y1, x0, x1)``; the refined mask never leaves it.
    slice_boxes: slice index z -> prompt box ``[x_min, y_min, x_max, y_max]`` in that slice's
      pixels (inclusive); empty for boxes given from outside, whose prompts come from the box.
    score: the ranking score: the candidate classifier's nodule probability (``fpr.py``) when
      it ran, else the detector's mean foreground probability (None if not detected).
    detector_score: the detector's mean foreground probability over the component.
    source: what proposed it: ``detector``, ``blob filter`` (``blobs.py``), ``given box`` or
      ``click``.
    blob_response: the blob filter's response, for its candidates.
    click_zyx: the clicked voxel of a ``click`` candidate; its box is proposed from the click
      (``BoxRefiner.box_from_click``).
    detector_mask: the detector's component, bool, shaped like the 3D box (None if not detected).
    detector_probability: the detector's foreground probability (float32), shaped like the 3D
      box as detected (None if not detected), zero on other candidates' components inside the
      box; ``detected_box_ijk`` is that box. Refinement votes with it only while the box is
      unchanged (``prior``).
    """

    name: str
    box_ijk: tuple[int, int, int, int, int, int]
    score: float | None = None
    slice_boxes: dict[int, np.ndarray] = field(default_factory=dict)
    detected_volume_mm3: float | None = None
    detector_mask: np.ndarray | None = None
    detector_probability: np.ndarray | None = None
    detected_box_ijk: tuple[int, int, int, int, int, int] | None = None
    detector_score: float | None = None
    source: str = "detector"
    blob_response: float | None = None
    click_zyx: tuple[int, int, int] | None = None

    def prior(self) -> np.ndarray | None:
        """The detector's probability over the box, or None once the box differs from the
        detected one (a user's edit overrides the detector) or when there is none."""
        if self.detector_probability is None or tuple(self.box_ijk) != tuple(self.detected_box_ijk or ()):
            return None
        return self.detector_probability

    def prompt_boxes(self) -> dict[int, np.ndarray]:
        """The detector prompts that still lie inside the (possibly edited) 3D box, clipped to it."""
        z0, z1, y0, y1, x0, x1 = self.box_ijk
        out = {}
        for z, box in self.slice_boxes.items():
            if not z0 <= z < z1:
                continue
            clipped = np.array([max(box[0], x0), max(box[1], y0), min(box[2], x1 - 1),
                                min(box[3], y1 - 1)], dtype=float)
            if clipped[0] <= clipped[2] and clipped[1] <= clipped[3]:
                out[z] = clipped
        return out


def box2d_from_contours(mask2d: np.ndarray) -> np.ndarray | None:
    """The box around all outer OpenCV contours of a 2D mask, inclusive pixel indices."""
    contours, _ = cv2.findContours(mask2d.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    x, y, w, h = cv2.boundingRect(np.concatenate(contours))
    return np.array([x, y, x + w - 1, y + h - 1], dtype=float)


def component_boxes(component: np.ndarray, offset_zyx, shape_zyx, expansion: float = EXPANSION,
                    pad_px: float = PAD_PX) -> tuple[dict[int, np.ndarray], tuple[int, ...]]:
    """The prompt boxes and the 3D box of one candidate's mask.

    component: bool ``[z, y, x]`` whose voxel (0, 0, 0) is ``offset_zyx`` in a volume of
    ``shape_zyx``. Each slice it covers gets its contours' box, expanded (volume pixels); the 3D
    box holds those boxes and one more slice above and below, so refinement can reach slices
    the mask missed.
    """
    z_off, y_off, x_off = (int(v) for v in offset_zyx)
    slice_boxes = {}
    for dz in np.flatnonzero(component.any(axis=(1, 2))):
        box = box2d_from_contours(component[dz]) + [x_off, y_off, x_off, y_off]
        slice_boxes[z_off + int(dz)] = expand_box2d(box, expansion, pad_px, shape_zyx[1:])
    stacked = np.array(list(slice_boxes.values()))
    box_ijk = clip_box3d((min(slice_boxes) - 1, max(slice_boxes) + 2,
                          int(np.floor(stacked[:, 1].min())), int(np.ceil(stacked[:, 3].max())) + 1,
                          int(np.floor(stacked[:, 0].min())), int(np.ceil(stacked[:, 2].max())) + 1),
                         shape_zyx)
    return slice_boxes, box_ijk


def candidates_from_mask(mask: np.ndarray, probability: np.ndarray | None,
                         spacing_zyx_mm, min_volume_mm3: float = MIN_VOLUME_MM3,
                         expansion: float = EXPANSION, pad_px: float = PAD_PX) -> list[Candidate]:
    """Split a detector mask ``[z, y, x]`` into 3D connected components, one candidate each.

    Components smaller than ``min_volume_mm3`` are dropped. Each kept component gets a prompt box
    per slice (its contours' box, expanded), and a 3D box that holds those prompts and one more
    slice above and below, so refinement can reach slices the detector missed. Candidates are
    sorted by score (highest first) and named ``Nodule 1..n``.
    """
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    voxel_mm3 = float(np.prod(spacing_zyx_mm))
    found = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        component = labels[region] == index
        volume_mm3 = float(component.sum()) * voxel_mm3
        if volume_mm3 < min_volume_mm3:
            continue
        score = float(probability[region][component].mean()) if probability is not None else 1.0
        slice_boxes, box_ijk = component_boxes(component, [s.start for s in region], mask.shape,
                                               expansion, pad_px)
        z0, z1, y0, y1, x0, x1 = box_ijk
        in_box = labels[z0:z1, y0:y1, x0:x1]
        detector_mask = in_box == index
        prior = None
        if probability is not None:
            # the detector's say over this candidate's own component and the background only: a
            # neighbour's component in the box (a vessel, another nodule) must not be voted in
            prior = np.asarray(probability[z0:z1, y0:y1, x0:x1], np.float32).copy()
            prior[(in_box != 0) & ~detector_mask] = 0.0
        found.append(Candidate("", box_ijk, score, slice_boxes, volume_mm3, detector_mask, prior,
                               box_ijk if prior is not None else None, score))
    return number_candidates(found)


def number_candidates(candidates: list[Candidate]) -> list[Candidate]:
    """Sort by score (highest first) and name them ``Nodule 1..n``."""
    candidates.sort(key=lambda c: -c.score)
    for number, candidate in enumerate(candidates, start=1):
        candidate.name = f"Nodule {number}"
    return candidates


def union_mask(candidates: list[Candidate], shape_zyx) -> np.ndarray:
    """Bool ``[z, y, x]``: the voxels of the candidates' detector masks."""
    union = np.zeros(shape_zyx, bool)
    for candidate in candidates:
        if candidate.detector_mask is not None:
            z0, z1, y0, y1, x0, x1 = candidate.box_ijk
            union[z0:z1, y0:y1, x0:x1] |= candidate.detector_mask
    return union


def in_lungs(candidates: list[Candidate], lungs: np.ndarray, min_fraction: float) -> list[Candidate]:
    """The candidates with at least ``min_fraction`` of their detector voxels inside ``lungs``
    (bool ``[z, y, x]``), renumbered."""
    kept = []
    for candidate in candidates:
        z0, z1, y0, y1, x0, x1 = candidate.box_ijk
        inside = lungs[z0:z1, y0:y1, x0:x1][candidate.detector_mask]
        if inside.size and inside.mean() >= min_fraction:
            kept.append(candidate)
    return number_candidates(kept)


def depth_ratio(candidate: Candidate, spacing_zyx_mm, hu: np.ndarray | None = None,
                dense_hu: float = DENSE_HU) -> float:
    """Depth over width of a candidate: the slices it spans times the slice spacing, over its
    detector mask's largest in-plane extent, both in mm. About 1 for a round nodule seen on every
    slice it crosses.

    hu: the volume (``[z, y, x]``). With it, the depth also counts the slices next to the
    detection where the CT is still dense (above ``dense_hu``) over most of the detection's
    footprint, so a nodule the detector found on one of its four slices keeps its real depth,
    while a vessel lying in the slice plane, whose neighbours are lung, stays flat.
    """
    mask = candidate.detector_mask
    sz, sy, sx = (float(v) for v in spacing_zyx_mm)
    footprint = mask.any(axis=0)
    ys, xs = np.nonzero(footprint)
    width = max((ys.max() - ys.min() + 1) * sy, (xs.max() - xs.min() + 1) * sx)
    present = np.flatnonzero(mask.any(axis=(1, 2))) + candidate.box_ijk[0]
    first, last = int(present[0]), int(present[-1])
    if hu is not None:
        _, _, y0, y1, x0, x1 = candidate.box_ijk
        # the box grown by half its size on each side: a nodule's next slice lies within it,
        # while a vessel or the pleura runs on beyond it
        gy, gx = (y1 - y0) // 2 + 1, (x1 - x0) // 2 + 1
        wide = np.s_[max(y0 - gy, 0):y1 + gy, max(x0 - gx, 0):x1 + gx]
        inner = np.zeros(hu.shape[1:], bool)
        inner[y0:y1, x0:x1] = footprint

        def dense(z: int) -> bool:
            if not 0 <= z < hu.shape[0]:
                return False
            tissue = hu[z] > dense_hu
            if tissue[inner].mean() < 0.5:
                return False
            near = _component_touching(tissue[wide], inner[wide])
            return near.sum() <= 2 * footprint.sum()

        reach = int(np.ceil(width / sz))  # beyond this the ratio is 1 or more anyway
        while first > present[0] - reach and dense(first - 1):
            first -= 1
        while last < present[-1] + reach and dense(last + 1):
            last += 1
    return float((last - first + 1) * sz / width)


def _component_touching(mask2d: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The 8-connected parts of ``mask2d`` that overlap ``seed``."""
    labels, _ = ndimage.label(mask2d, structure=np.ones((3, 3), bool))
    touched = np.unique(labels[seed & mask2d])
    return np.isin(labels, touched[touched > 0])


def round_enough(candidates: list[Candidate], spacing_zyx_mm, min_ratio: float,
                 n_slices: int | None = None, hu: np.ndarray | None = None) -> list[Candidate]:
    """The candidates whose ``depth_ratio`` is at least ``min_ratio``, renumbered.

    A round nodule as wide as a flat detection would cross more slices. On LIDC-IDRI-0001 and
    -0003 every true nodule had a ratio of 0.48 or more, while large flat detections on one or
    two slices (vessels in plane, the pleura) had 0.15 to 0.28 (BENCHMARKS.md). Kept whatever
    their ratio: candidates without a detector mask (given boxes) and, when ``n_slices`` (the
    volume's) is given, those reaching its first or last slice, whose depth is cut off.
    """
    def judged_flat(c: Candidate) -> bool:
        if c.detector_mask is None:
            return False
        if n_slices is not None:
            present = np.flatnonzero(c.detector_mask.any(axis=(1, 2))) + c.box_ijk[0]
            if present.size and (present[0] == 0 or present[-1] == n_slices - 1):
                return False
        return depth_ratio(c, spacing_zyx_mm, hu) < min_ratio

    return number_candidates([c for c in candidates if not judged_flat(c)])
