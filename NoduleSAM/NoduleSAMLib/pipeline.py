"""detect -> candidates -> refine -> labelled mask + measurements, with per-stage timings."""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from . import boxes as boxes_mod
from .blobs import blob_candidates
from .boxes import Candidate
from .errors import NoduleSAMError
from .geometry import apply_matrix, box3d_corners_ijk
from .lungs import lung_mask, shows_whole_chest
from .management import readout
from .measure import measure_nodule
from .nodule_type import classify_in_box
from .prompts import box_from_click, candidates_from_boxes, candidates_from_points
from .refine import BoxRefiner
from .settings import CandidateSettings
from .volume import CTVolume


@dataclass
class Nodule:
    """A segmented nodule: its candidate, its mask (bool, shaped like the box) and measurements."""

    candidate: Candidate
    mask: np.ndarray
    measurements: dict
    label: int = 0


@dataclass
class Result:
    volume: CTVolume
    nodules: list[Nodule]
    timings_s: dict = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def labelmap(self) -> np.ndarray:
        """uint16 ``[z, y, x]``: nodule n (1-based, in list order) has label n (``segment`` makes
        the nodules' masks disjoint)."""
        out = np.zeros(self.volume.hu.shape, dtype=np.uint16)
        for nodule in self.nodules:
            z0, z1, y0, y1, x0, x1 = nodule.candidate.box_ijk
            region = out[z0:z1, y0:y1, x0:x1]
            region[nodule.mask & (region == 0)] = nodule.label
        return out


def volume_fingerprint(volume: CTVolume) -> str:
    """A short content hash, so cached embeddings never outlive the pixels they came from."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(np.ascontiguousarray(volume.hu))  # the buffer itself, not a copy
    digest.update(np.asarray(volume.hu.shape).tobytes())
    return digest.hexdigest()


@contextmanager
def timed_stage(timings: dict, stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def box_world_mm(volume: CTVolume, box_ijk) -> dict:
    """A voxel box's outer corners (min and max over the 8 corners) in RAS and LPS mm."""
    corners = box3d_corners_ijk(box_ijk)
    out = {}
    for frame, matrix in (("ras", volume.ijk_to_ras), ("lps", volume.ijk_to_lps)):
        world = apply_matrix(matrix, corners)
        out[f"box_{frame}_mm"] = [world.min(axis=0).tolist(), world.max(axis=0).tolist()]
    return out


class Pipeline:
    """The engine the command line, the Slicer module and the training package share.

    detector: a ``detect.Detector`` (None: only given boxes can be refined).
    refiner: a ``refine.BoxRefiner`` (None: the detector's masks are the result).
    settings: how detector masks become candidates (``settings.CandidateSettings``, defaults
      there); keyword ``changes`` override single fields, e.g. ``Pipeline(d, min_in_lungs=0)``.
      The lung gate (``min_in_lungs``) is applied only to volumes that show the whole chest
      cross-section (not to crops such as LIDC VOIs): on the demo CT it removes 7 of 25
      candidates (in bone, soft tissue, the scan's first slices) and keeps the lesion. The flat
      filter (``min_depth_ratio``) is not applied to candidates reaching the volume's first or
      last slice, whose depth is cut off. Blob candidates (``blobs``) are added only with a
      classifier, on whole-chest volumes, where they touch no detector candidate that passed
      the filters.
    fpr: a ``fpr.FalsePositiveReducer`` (None: candidates keep the detector's score). Its nodule
      probability becomes each candidate's score and orders the list; candidates scoring below
      ``fpr_threshold`` (an operating point's threshold, ``FalsePositiveReducer.threshold``) are
      dropped.
    """

    def __init__(self, detector=None, refiner: BoxRefiner | None = None,
                 settings: CandidateSettings | None = None, fpr=None, fpr_threshold: float = 0.0,
                 **changes):
        self.detector = detector
        self.refiner = refiner
        self.settings = replace(settings or CandidateSettings(), **changes)
        self.fpr = fpr
        self.fpr_threshold = fpr_threshold

    def detect(self, volume: CTVolume, timings: dict | None = None) -> list[Candidate]:
        """Candidates found by the detector, highest score first."""
        if self.detector is None:
            raise NoduleSAMError("no detector is loaded: pass --detector, or give boxes")
        timings = {} if timings is None else timings
        with timed_stage(timings, "detect_s"):
            detection = self.detector.predict(volume)
        with timed_stage(timings, "candidates_s"):
            stages = self.candidate_stages(volume, detection)
        return stages["kept"]

    def candidate_stages(self, volume: CTVolume, detection) -> dict[str, list[Candidate]]:
        """The candidates after each step, in order: ``detected`` (>= the minimum volume),
        ``in_lungs`` and ``not_flat`` (when those filters are on), ``with_blobs`` (plus the blob
        filter's, when on), ``scored`` (all of the previous step's, scored by the classifier,
        when there is one) and ``kept`` (the result)."""
        spacing, settings = volume.spacing_zyx_mm, self.settings
        stages = {"detected": boxes_mod.candidates_from_mask(
            detection.mask, detection.probability, spacing, settings.min_volume_mm3,
            settings.expansion, settings.pad_px)}
        current = stages["detected"]
        whole_chest = shows_whole_chest(volume.hu.shape, spacing)
        with_blobs = self.fpr is not None and settings.blobs and whole_chest
        lungs = None
        if whole_chest and (settings.min_in_lungs > 0 or with_blobs):  # the detector's, if it has one
            lungs = getattr(detection, "lungs", None)
            lungs = lung_mask(volume.hu, spacing) if lungs is None else lungs
        if settings.min_in_lungs > 0 and whole_chest:
            current = stages["in_lungs"] = boxes_mod.in_lungs(current, lungs, settings.min_in_lungs)
        if settings.min_depth_ratio > 0:
            current = stages["not_flat"] = boxes_mod.round_enough(current, spacing, settings.min_depth_ratio,
                                                                  volume.hu.shape[0], volume.hu)
        if with_blobs:
            found = blob_candidates(volume.hu, spacing, lungs, avoid=boxes_mod.union_mask(current, volume.hu.shape),
                                    pad_px=settings.pad_px)
            current = stages["with_blobs"] = current + found
        if self.fpr is not None:
            current = stages["scored"] = score_candidates(self.fpr, volume, current)
            current = boxes_mod.number_candidates([c for c in current if c.score >= self.fpr_threshold])
        stages["kept"] = current
        return stages

    def segment(self, volume: CTVolume, candidates: list[Candidate],
                timings: dict | None = None, progress=None) -> list[Nodule]:
        """Refine (or, without a refiner, keep the detector's mask of) each candidate and measure it.

        progress: optional callable(done, total) for GUIs, also called after every refined slice
          (with the same counts) so that raising from it cancels promptly; the command line
          shows a tqdm bar instead.
        """
        timings = {} if timings is None else timings
        key = volume_fingerprint(volume) if self.refiner is not None else None
        nodules = []
        claimed = np.zeros(volume.hu.shape, dtype=bool)  # voxels of the nodules before
        for done, candidate in enumerate(tqdm(candidates, desc="refine", unit="nodule",
                                              disable=progress is not None or not candidates)):
            with timed_stage(timings, "refine_s"):
                if candidate.click_zyx is not None and self.refiner is not None:
                    candidate = self.box_for_click(volume, candidate)
                if self.refiner is not None:
                    on_slice = None if progress is None else (lambda: progress(done, len(candidates)))
                    mask = self.refiner.refine(volume.hu, candidate, key, on_slice,
                                               spacing_zyx_mm=volume.spacing_zyx_mm)
                elif candidate.detector_mask is not None:
                    mask = candidate.detector_mask
                else:
                    raise NoduleSAMError(f"'{candidate.name}' has no detector mask and refinement "
                                         "is off: a given box needs the refiner")
            with timed_stage(timings, "measure_s"):
                z0, z1, y0, y1, x0, x1 = candidate.box_ijk
                # a voxel belongs to one nodule: the first (best-ranked) that painted it, so the
                # measurements add up to the label map
                mask = mask & ~claimed[z0:z1, y0:y1, x0:x1]
                claimed[z0:z1, y0:y1, x0:x1] |= mask
                full = np.zeros(volume.hu.shape, dtype=bool)
                full[z0:z1, y0:y1, x0:x1] = mask
                measurements = measure_nodule(volume, full)
            nodules.append(Nodule(candidate, mask, measurements, label=len(nodules) + 1))
            if progress is not None:
                progress(done + 1, len(candidates))
        return nodules

    def box_for_click(self, volume: CTVolume, candidate: Candidate) -> Candidate:
        """A copy of a click candidate whose box is the one its click proposes
        (``prompts.box_from_click``); the box then refines like any given box."""
        box = box_from_click(volume.hu, volume.spacing_zyx_mm, candidate.click_zyx)
        return replace(candidate, box_ijk=box)

    def run(self, volume: CTVolume, boxes: list | None = None, points: list | None = None) -> Result:
        """The whole job: detect (unless ``boxes`` or ``points`` are given), then refine and
        measure. Given boxes and points are refined together, boxes first."""
        timings, messages = {}, []
        start = time.perf_counter()
        if boxes is None and points is None:
            candidates = self.detect(volume, timings)
        else:
            candidates, messages = given_candidates(volume, boxes, points)
        nodules = self.segment(volume, candidates, timings)
        timings["total_s"] = time.perf_counter() - start
        return Result(volume, nodules, timings, messages)


def given_candidates(volume: CTVolume, boxes: list | None, points: list | None
                     ) -> tuple[list[Candidate], list[str]]:
    """The candidates of a user's boxes and clicks on ``volume`` (boxes first) and the messages
    about those skipped; refuses when none is left (an error, not "0 nodules")."""
    candidates, messages = candidates_from_boxes(boxes or [], volume.hu.shape)
    clicked, more = candidates_from_points(points or [], volume.ijk_to_lps, volume.hu.shape)
    candidates, messages = candidates + clicked, messages + more
    if not candidates:
        raise NoduleSAMError("nothing to refine: " + ("; ".join(messages) if messages
                                                      else "the boxes and points lists are empty"))
    return candidates, messages


def score_candidates(fpr, volume: CTVolume, candidates: list[Candidate]) -> list[Candidate]:
    """Copies of ``candidates`` whose score is the classifier's, ordered and renumbered."""
    scores = fpr.score(volume.hu, volume.spacing_zyx_mm, candidates)
    return boxes_mod.number_candidates([replace(c, score=float(p)) for c, p in zip(candidates, scores)])


def nodule_record(volume: CTVolume, nodule: Nodule, multiple: bool = False,
                  risk: str | None = None) -> dict:
    """A nodule as the report lists it; its ``ijk`` box can be fed back as ``--boxes``.

    Its type, solid component, baseline Lung-RADS v2022 category and Fleischner 2017 text
    (``multiple``: the CT has other nodules) are decision support for a radiologist, not a
    diagnosis (``management``, ``nodule_type``).
    """
    candidate = nodule.candidate
    record = {
        "name": candidate.name,
        "label": nodule.label,
        "ijk": list(candidate.box_ijk),
        **box_world_mm(volume, candidate.box_ijk),
        "source": candidate.source if candidate.score is not None or candidate.click_zyx else "given box",
        **({"click_ijk": list(candidate.click_zyx)} if candidate.click_zyx else {}),
        "score": candidate.score,
        "detector_score": candidate.detector_score,
        "detector_volume_mm3": candidate.detected_volume_mm3,
        **nodule.measurements,
        **classify_in_box(volume, candidate.box_ijk, nodule.mask),
    }
    return record | readout(record, multiple=multiple, risk=risk)
