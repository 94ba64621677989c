"""FROC, CPM and matching arithmetic on hand-made cases with known hits and false positives."""
from __future__ import annotations

import numpy as np
import pytest

from NoduleSAMLib.boxes import Candidate
from nodulesam_train import froc


def test_froc_on_a_hand_made_case():
    # 2 scans, 4 lesions: found with scores 0.9, 0.8 and 0.4; the fourth is missed.
    # False positives score 0.95, 0.7, 0.5, 0.3, 0.2 and 0.1.
    result = froc.froc([0.9, 0.8, 0.4], [0.95, 0.7, 0.5, 0.3, 0.2, 0.1], n_lesions=4, n_scans=2)
    # at 1/8 and 1/4 FP per scan no false positive is allowed (floor(0.25 x 2) = 0): the
    # threshold must stay above 0.95, so nothing is found
    # at 1/2: 1 allowed -> above 0.7; at 1: 2 allowed -> above 0.5; both find 0.9 and 0.8
    # at 2: 4 allowed -> above 0.2 -> all three found; at 4 and 8: everything
    assert result["sensitivity"] == pytest.approx([0, 0, 0.5, 0.5, 0.75, 0.75, 0.75])
    assert result["cpm"] == pytest.approx((0.5 + 0.5 + 0.75 * 3) / 7)
    assert result["thresholds"][2] == pytest.approx(0.7) and result["thresholds"][2] > 0.7
    assert result["thresholds"][3] == pytest.approx(0.5) and result["thresholds"][3] > 0.5
    assert result["thresholds"][-1] == -np.inf
    # the operating point at that threshold gives back exactly 1 FP per scan
    point = froc.operating_point([0.9, 0.8, 0.4], [0.95, 0.7, 0.5, 0.3, 0.2, 0.1], 4, 2,
                                 result["thresholds"][3])
    assert point["fp_per_scan"] == 1.0 and point["sensitivity"] == 0.5
    # a tie between a lesion and the next false positive is not counted as found
    tied = froc.froc([0.7], [0.7], n_lesions=1, n_scans=1, rates=(0.5, 1.0))
    assert tied["sensitivity"] == [0.0, 1.0]
    assert all(0 <= s <= 1 for _, s in result["curve"])


def _candidate(box, mask, score):
    return Candidate("c", box, score, detector_mask=mask, detector_score=score)


def test_match_counts_hits_once_ignores_and_false_positives():
    labels = np.zeros((4, 20, 20), np.int32)
    labels[1:3, 2:6, 2:6] = 1       # lesion 1
    labels[1:3, 12:16, 12:16] = 2   # an ignored finding (e.g. outside the lungs)
    full = np.ones((2, 4, 4), bool)
    candidates = [
        _candidate((1, 3, 2, 6, 2, 6), full, 0.6),            # on lesion 1
        _candidate((1, 3, 4, 8, 4, 8), full, 0.9),            # overlaps lesion 1 in a corner
        _candidate((1, 3, 12, 16, 12, 16), full, 0.8),        # on the ignored finding
        _candidate((0, 2, 8, 12, 2, 6), full, 0.3),           # on nothing: a false positive
    ]
    outcome = froc.match(candidates, [c.score for c in candidates], labels, [1], [2])
    assert outcome.lesion_scores == {1: 0.9}   # found once, by its best candidate
    assert outcome.fp_scores == [0.3] and outcome.fp_index == [3]
