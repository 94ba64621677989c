"""Overlap metrics of a predicted 2D/3D mask against a reference, and their summaries.

Conventions for empty masks: both empty -> DSC = IoU = precision = recall = 1; prediction empty
and reference not -> all 0 (a miss); reference empty and prediction not -> DSC = IoU =
precision = 0, recall = 1.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from NoduleSAMLib.measure import largest_component


def overlap(pred: np.ndarray, ref: np.ndarray) -> dict:
    """DSC, IoU, precision, recall and ``detected`` (any overlap with the reference)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {ref.shape}")
    tp = float(np.logical_and(pred, ref).sum())
    n_pred, n_ref = float(pred.sum()), float(ref.sum())
    union = n_pred + n_ref - tp
    return {
        "dsc": 2 * tp / (n_pred + n_ref) if n_pred + n_ref else 1.0,
        "iou": tp / union if union else 1.0,
        "precision": tp / n_pred if n_pred else (1.0 if not n_ref else 0.0),
        "recall": tp / n_ref if n_ref else 1.0,
        "detected": bool(tp > 0) if n_ref else not n_pred,
        "pred_px": int(n_pred),
        "ref_px": int(n_ref),
    }


def threshold_in_box(hu2d: np.ndarray, box_xyxy, threshold_hu: float = -600.0) -> np.ndarray:
    """Classical baseline: HU > ``threshold_hu`` inside the (inclusive) box, largest 4-connected
    component, holes filled. Full-slice bool mask."""
    x0, y0, x1, y1 = (int(round(v)) for v in box_xyxy)
    ny, nx = hu2d.shape
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, nx - 1), min(y1, ny - 1)
    out = np.zeros(hu2d.shape, bool)
    inside = hu2d[y0:y1 + 1, x0:x1 + 1] > threshold_hu
    if inside.any():
        out[y0:y1 + 1, x0:x1 + 1] = ndimage.binary_fill_holes(largest_component(inside))
    return out


def summarize(values: list[dict], prefix_keys=("dsc", "iou")) -> dict:
    """mean/median/std of DSC and IoU, mean precision/recall, and ``missed`` (not detected)."""
    out: dict = {}
    if not values:
        for k in prefix_keys:
            out.update({f"{k}_mean": None, f"{k}_median": None, f"{k}_std": None})
        out.update({"precision_mean": None, "recall_mean": None, "missed": 0, "n": 0})
        return out
    for k in prefix_keys:
        arr = np.array([v[k] for v in values], float)
        out.update({f"{k}_mean": float(arr.mean()), f"{k}_median": float(np.median(arr)),
                    f"{k}_std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0})
    out["precision_mean"] = float(np.mean([v["precision"] for v in values]))
    out["recall_mean"] = float(np.mean([v["recall"] for v in values]))
    out["missed"] = int(sum(not v["detected"] for v in values))
    out["n"] = len(values)
    return out
