"""Per-lesion detection scoring: matching candidates to reference lesions, FROC and CPM.

A reference lesion is *found* by a candidate whose detector mask overlaps it (one voxel is
enough). A candidate that overlaps no reference lesion and no ignored label is a false positive;
one that overlaps only ignored labels (1-2 reader LIDC findings, lesions outside the lungs)
counts neither way. Several candidates on one lesion find it once, and the extra ones are not
false positives (as in LUNA16).

FROC: for each score threshold, the sensitivity (found lesions / all lesions) against the mean
number of false positives per scan. The CPM is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4
and 8 false positives per scan (LUNA16). A lesion's score is the highest score of the candidates
that find it; at a rate r, the threshold may admit at most ``floor(r x scans)`` false positives,
so it lies just above the score of the next one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class Outcome:
    """What one scan's candidates found.

    lesion_scores: lesion key -> best score of a candidate that found it (absent: missed).
    fp_scores: the scores of the false-positive candidates.
    fp_index: the index (into the scan's candidate list) of each false positive.
    """

    lesion_scores: dict = field(default_factory=dict)
    fp_scores: list = field(default_factory=list)
    fp_index: list = field(default_factory=list)


def match(candidates, scores, labels: np.ndarray, lesion_values, ignored_values=()) -> Outcome:
    """Match a scan's candidates (``boxes.Candidate`` with a detector mask) to its label map.

    scores: one score per candidate (the ranking score: detector or classifier).
    labels: int ``[z, y, x]``; lesion_values / ignored_values: which label values mean what.
    """
    lesion_values, ignored_values = set(lesion_values), set(ignored_values)
    outcome = Outcome()
    for index, (candidate, score) in enumerate(zip(candidates, scores)):
        z0, z1, y0, y1, x0, x1 = candidate.box_ijk
        hit = set(np.unique(labels[z0:z1, y0:y1, x0:x1][candidate.detector_mask]).tolist())
        found = hit & lesion_values
        for value in found:
            outcome.lesion_scores[value] = max(outcome.lesion_scores.get(value, -np.inf), float(score))
        if not found and not hit & ignored_values:
            outcome.fp_scores.append(float(score))
            outcome.fp_index.append(index)
    return outcome


def froc(lesion_scores, fp_scores, n_lesions: int, n_scans: int, rates=FP_RATES) -> dict:
    """Sensitivity at each false-positive rate, and the CPM.

    lesion_scores: the score of each found lesion (missed lesions are simply absent).
    fp_scores: the scores of all false positives over ``n_scans`` scans.
    Returns ``{"rates", "sensitivity", "thresholds", "cpm", "curve"}``: ``thresholds[i]`` is the
    lowest score kept at ``rates[i]`` (a candidate is kept when its score is >= it), and
    ``curve`` the full (fp per scan, sensitivity) staircase, for plotting.
    """
    lesion = np.sort(np.asarray(list(lesion_scores), float))[::-1]
    fps = np.sort(np.asarray(list(fp_scores), float))[::-1]
    sensitivity, thresholds = [], []
    for rate in rates:
        allowed = int(np.floor(rate * n_scans + 1e-9))
        if allowed >= len(fps):
            threshold = -np.inf
        else:
            threshold = float(np.nextafter(fps[allowed], np.inf))
        sensitivity.append(float((lesion >= threshold).sum() / n_lesions) if n_lesions else float("nan"))
        thresholds.append(threshold)
    points = np.unique(np.concatenate([lesion, fps]))[::-1]
    curve = [(float((fps >= t).sum() / n_scans), float((lesion >= t).sum() / max(1, n_lesions)))
             for t in points]
    return {"rates": list(rates), "sensitivity": sensitivity, "thresholds": thresholds,
            "cpm": float(np.mean(sensitivity)), "curve": curve}


def operating_point(lesion_scores, fp_scores, n_lesions: int, n_scans: int, threshold: float) -> dict:
    """Sensitivity and false positives per scan when candidates with score >= ``threshold`` are kept."""
    lesion = np.asarray(list(lesion_scores), float)
    fps = np.asarray(list(fp_scores), float)
    return {"threshold": float(threshold),
            "sensitivity": float((lesion >= threshold).sum() / n_lesions) if n_lesions else float("nan"),
            "fp_per_scan": float((fps >= threshold).sum() / n_scans)}
