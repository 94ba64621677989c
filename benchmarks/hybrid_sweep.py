"""Sweep the hybrid's knobs (box, SAM threshold, fusion with nnU-Net) on the VOI central slices.

    python benchmarks/hybrid_sweep.py --split val [--voi-dir DIR] [--out DIR] [--limit N]

Pass 1 runs the expensive models once per case and caches, under ``OUT/cache/``, the nnU-Net
foreground probability and, for every box setting, SAM's logits of each nnU-Net component.
Pass 2 scores every combination of box setting x SAM threshold x fusion rule from the cache
(no model runs) and writes ``OUT/sweep.csv`` (one row per combination, mean DSC / IoU /
precision / recall), ``OUT/sweep.md`` (sorted by DSC) and ``OUT/per_case.npz`` (per combination
and case: DSC and recall, for benchmarks/hybrid_robustness.py). Choose settings on ``val``; run
``nodulesam-train evaluate`` with them on ``test``.

Fusion rules (``evaluate.fuse``; per nnU-Net component ``c``, SAM mask ``S_c = logits_c > t``):

- ``sam``: the union of the SAM masks (the plain hybrid);
- ``gate<g>``: ``S_c``, or ``c`` itself when IoU(S_c, c) < g;
- ``union``: ``S_c | c``;
- ``mean<w>``: ``w * P_nnunet + (1 - w) * sigmoid(max_c logits_c - t) > 0.5`` (soft vote).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
from nodulesam_train.detector_data import default_lidc_dir  # noqa: E402

BOXES = ((0.0, 0.0), (0.0, 2.0), (0.0, 4.0), (0.1, 0.0), (0.1, 2.0))  # (expansion, pad_px)
THRESHOLDS = (-2.0, -1.0, 0.0, 1.0)
FUSIONS = ("sam", "gate0.5", "gate0.7", "union", "mean0.3", "mean0.5", "mean0.7")


def cache_case(path: Path, case, detector, refiner) -> None:
    from nodulesam_train.evaluate import HybridSettings, nnunet_slice, sam_logits_per_component

    hu = case.hu.astype(np.float32)
    probability, mask = nnunet_slice(detector, hu, case.spacing)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    logits = np.zeros((len(BOXES), n) + hu.shape, np.float16)
    for b, (expansion, pad) in enumerate(BOXES):
        prompts = sam_logits_per_component(refiner, hu, mask, HybridSettings(expansion=expansion, pad_px=pad),
                                           case.case_id)
        for c, (_, component_logits) in enumerate(prompts):  # components in label order
            logits[b, c] = np.clip(component_logits, -60, 60)
    np.savez_compressed(path, gt=case.consensus > 0, probability=probability.astype(np.float16),
                        labels=labels.astype(np.int16), logits=logits)


def settings_for(rule: str, threshold: float):
    """The ``evaluate.HybridSettings`` of a sweep rule name (``sam``, ``gate0.7``, ``union``, ``mean0.7``)."""
    from nodulesam_train.evaluate import HybridSettings

    if rule.startswith("mean"):
        return HybridSettings(fusion="soft", nnunet_weight=float(rule[4:]), sam_threshold=threshold)
    if rule.startswith("gate"):
        return HybridSettings(fusion="sam", gate_iou=float(rule[4:]), sam_threshold=threshold)
    return HybridSettings(fusion=rule, sam_threshold=threshold)


def fuse_cached(rule: str, threshold: float, case: dict, box_index: int) -> np.ndarray:
    """``evaluate.fuse`` on a cached case."""
    from nodulesam_train.evaluate import fuse

    logits = case["logits"][box_index].astype(np.float32)
    prompts = [(case["labels"] == c + 1, logits[c]) for c in range(logits.shape[0])]
    return fuse(prompts, case["probability"].astype(np.float32), settings_for(rule, threshold))[0]


def main() -> None:
    import torch
    from tqdm import tqdm

    from NoduleSAMLib.detect import Detector
    from NoduleSAMLib.models import build_sam, detector_folder
    from NoduleSAMLib.refine import BoxRefiner, RefineSettings
    from nodulesam_train.lidc import read_cases_csv, voi_case
    from nodulesam_train.metrics import overlap

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voi-dir", type=Path, default=Path(default_lidc_dir()) / "voi")
    parser.add_argument("--split", default="val")
    parser.add_argument("--model", default="nodule-voi")
    parser.add_argument("--out", type=Path, default=None, help="default: out/sweep/<split>")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or REPO / "out" / "sweep" / args.split
    (out / "cache").mkdir(parents=True, exist_ok=True)

    table = [r for r in read_cases_csv(args.voi_dir / "cases.csv") if r["split"] == args.split]
    table = table[: args.limit] if args.limit else table
    detector = refiner = None
    start = time.time()
    with torch.inference_mode():
        for entry in tqdm(table, desc=f"cache {args.split}", unit="case"):
            path = out / "cache" / f"{entry['case_id']}.npz"
            if path.is_file():
                continue
            if detector is None:
                detector = Detector(detector_folder(args.model))
                detector.predictor.allow_tqdm = detector.predictor.verbose = False
                refiner = BoxRefiner(build_sam("litemedsam"), RefineSettings())
            cache_case(path, voi_case(args.voi_dir, entry), detector, refiner)
    print(f"cache: {time.time() - start:.0f} s")

    cases = [np.load(out / "cache" / f"{e['case_id']}.npz") for e in table]
    cases = [{k: c[k] for k in c.files} for c in cases]
    rows, per_case = [], {"names": [], "dsc": [], "recall": []}
    nnunet = [overlap(c["probability"] > 0.5, c["gt"]) for c in cases]
    per_case["names"].append("nnunet alone")
    per_case["dsc"].append([m["dsc"] for m in nnunet])
    per_case["recall"].append([m["recall"] for m in nnunet])
    rows.append({"box": "-", "threshold": "-", "fusion": "nnunet alone"} |
                {k: float(np.mean([m[k] for m in nnunet])) for k in ("dsc", "iou", "precision", "recall")})
    for (b, (expansion, pad)), threshold, rule in itertools.product(enumerate(BOXES), THRESHOLDS, FUSIONS):
        scores = [overlap(fuse_cached(rule, threshold, c, b), c["gt"]) for c in cases]
        dsc = np.array([s["dsc"] for s in scores])
        per_case["names"].append(f"{expansion:g}+{pad:g}px t={threshold:g} {rule}")
        per_case["dsc"].append(dsc)
        per_case["recall"].append([s["recall"] for s in scores])
        rows.append({"box": f"expansion {expansion} + {pad:g} px", "threshold": threshold, "fusion": rule}
                    | {k: float(np.mean([s[k] for s in scores])) for k in ("dsc", "iou", "precision", "recall")}
                    | {"wins_vs_nnunet": int((dsc > np.array([m["dsc"] for m in nnunet]) + 1e-9).sum())})
    np.savez_compressed(out / "per_case.npz", case_ids=[e["case_id"] for e in table],
                        **{k: np.asarray(v) for k, v in per_case.items()})
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[1]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Hybrid sweep on '{args.split}' ({len(cases)} cases)", "",
             "| box | SAM threshold | fusion | DSC | IoU | precision | recall | cases better than nnU-Net |",
             "|---|---|---|---|---|---|---|---|"]
    for r in [rows[0]] + sorted(rows[1:], key=lambda r: -r["dsc"]):
        lines.append(f"| {r['box']} | {r['threshold']} | {r['fusion']} | {r['dsc']:.4f} | {r['iou']:.4f} | "
                     f"{r['precision']:.4f} | {r['recall']:.4f} | {r.get('wins_vs_nnunet', '')} |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:25]))


if __name__ == "__main__":
    main()
