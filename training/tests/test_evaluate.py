"""``nodulesam-train evaluate`` on a handful of real LIDC VOI cases (``--limit 5``).

The nnU-Net model is the bundled ``nodule-voi`` when it is installed; otherwise the suite's tiny
model, trained once per cache by the ``tiny_voi_model`` fixture in the top-level conftest.py.
Needs the shared LIDC data (``../shared/data/lidc`` or ``$NODULESAM_LIDC_DIR``); skipped without it.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lidc_data import LIDC_DIR, needs_voi

pytestmark = needs_voi


def test_metrics_and_baseline():
    from nodulesam_train.evaluate import readers_loo, summarize_rows
    from nodulesam_train.metrics import overlap, threshold_in_box

    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    b = np.zeros_like(a)
    b[4:8, 4:8] = True
    m = overlap(a, b)
    assert m["dsc"] == pytest.approx(2 * 4 / 32) and m["iou"] == pytest.approx(4 / 28)
    assert m["precision"] == pytest.approx(0.25) and m["recall"] == pytest.approx(0.25) and m["detected"]
    assert overlap(np.zeros_like(a), b)["detected"] is False
    hu = np.full((20, 20), -900.0)
    hu[5:12, 5:12] = 40.0
    hu[8, 8] = -900.0  # a hole
    hu[15:17, 15:17] = 40.0  # another blob, outside the largest component
    mask = threshold_in_box(hu, [3, 3, 18, 18])
    assert mask.sum() == 49 and mask[8, 8]
    readers = np.stack([a, a, b])
    loo = readers_loo(readers)
    assert 0 < loo["dsc"] < 1
    row = {"case_id": "x"}
    for meth in ("nnunet", "hybrid", "sam_nnunet_box", "sam_gt_box", "readers", "threshold_gt_box"):
        row.update({f"{meth}_dsc": 0.5, f"{meth}_iou": 0.3, f"{meth}_precision": 0.5,
                    f"{meth}_recall": 0.5, f"{meth}_detected": True})
    s = summarize_rows([row, dict(row, hybrid_dsc=0.7)])
    assert s["n_cases"] == 2 and s["hybrid"]["dsc_mean"] == pytest.approx(0.6)


def test_fusion_rules():
    from nodulesam_train.evaluate import HybridSettings, fuse

    component = np.zeros((12, 12), bool)
    component[3:9, 3:9] = True
    probability = np.where(component, 0.8, 0.05).astype(np.float32)
    probability[3, 3] = 0.55  # a corner nnU-Net is unsure of
    logits = np.full((12, 12), -10.0, np.float32)
    logits[4:10, 4:10] = 10.0  # SAM: shifted by one pixel, sure of itself
    prompts = [(component, logits)]

    sam, _ = fuse(prompts, probability, HybridSettings(fusion="sam", sam_threshold=0.0))
    assert (sam == (logits > 0)).all()
    union, _ = fuse(prompts, probability, HybridSettings(fusion="union"))
    assert (union == (component | (logits > -1))).all()
    soft, _ = fuse(prompts, probability, HybridSettings(fusion="soft", nnunet_weight=0.7))
    # 0.7 * 0.8 = 0.56 > 0.5 keeps nnU-Net's confident pixels even where SAM says no ...
    assert soft[3, 8] and soft[8, 8]
    # ... drops the unsure corner (0.7 * 0.55 + 0.3 * 0 < 0.5), and SAM alone cannot add pixels
    # nnU-Net rejects (0.7 * 0.05 + 0.3 * 1 < 0.5)
    assert not soft[3, 3] and not soft[9, 9]
    assert soft.sum() == component.sum() - 1
    # weight 0 is SAM alone, at its threshold
    sam_only, _ = fuse(prompts, probability, HybridSettings(fusion="soft", nnunet_weight=0.0, sam_threshold=0.0))
    assert (sam_only == (logits > 0)).all()
    gated, n_gated = fuse([(component, np.full((12, 12), -10.0, np.float32))], probability,
                          HybridSettings(fusion="sam", gate_iou=0.5))
    assert n_gated == 1 and (gated == component).all()
    with pytest.raises(ValueError, match="fusion"):
        HybridSettings(fusion="average")


def test_evaluate_limit5(voi_model, tmp_path):
    from nodulesam_train.cli import main

    out = tmp_path / "eval"
    rc = main(["evaluate", "--voi-dir", str(LIDC_DIR / "voi"), "--split", "val", "--limit", "5",
               "--model", str(voi_model), "--out", str(out)])
    assert rc == 0
    for name in ("cases.csv", "summary.json", "summary.md", "run.json",
                 "figures/best_worst.png", "figures/pixel_comparison.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    methods = ("nnunet", "hybrid", "sam_nnunet_box", "sam_gt_box", "readers", "threshold_gt_box")
    assert set(summary) == {"n_cases", "wilcoxon_p_dsc", "wilcoxon_p_iou", *methods}
    assert summary["n_cases"] == 5
    keys = {"dsc_mean", "dsc_median", "dsc_std", "iou_mean", "iou_median", "iou_std",
            "precision_mean", "recall_mean", "missed"}
    for meth in methods:
        s = summary[meth]
        assert set(s) == keys
        for k in keys - {"missed"}:
            assert s[k] is not None and 0.0 <= s[k] <= 1.0, (meth, k, s[k])
        assert s["iou_mean"] <= s["dsc_mean"] + 1e-9
        assert 0 <= s["missed"] <= 5
    # references that need no trained model are good on real nodules
    assert summary["sam_gt_box"]["dsc_mean"] > 0.6
    assert summary["threshold_gt_box"]["dsc_mean"] > 0.6
    assert summary["readers"]["dsc_mean"] > 0.5
    for k in ("wilcoxon_p_dsc", "wilcoxon_p_iou"):
        assert summary[k] is None or 0.0 <= summary[k] <= 1.0
    import csv

    rows = list(csv.DictReader(open(out / "cases.csv")))
    assert len(rows) == 5 and all(r["split"] == "val" for r in rows)
    for r in rows:
        for meth in methods:
            assert 0.0 <= float(r[f"{meth}_dsc"]) <= 1.0
            assert not math.isnan(float(r[f"{meth}_iou"]))
    assert "| hybrid |" in (out / "summary.md").read_text()
