"""Evaluate nnU-Net, nnU-Net + SAM (hybrid) and references on the central slice of LIDC VOIs.

``nodulesam-train evaluate --voi-dir <lidc>/voi --split val --out OUT`` runs, per case of the
split (central slice = middle of the consensus z-range, see :mod:`nodulesam_train.lidc`), with
the 50 % consensus as ground truth:

- ``nnunet``: the nnU-Net v2 2D model (``--model``, default ``nodule-voi``) on the slice, given to
  :class:`NoduleSAMLib.detect.Detector` as a one-slice volume (z spacing 999 mm);
- ``hybrid``: nnU-Net + SAM: one box per 8-connected component of the nnU-Net mask
  (``boxes.box2d_from_contours`` + ``expand_box2d(expansion, pad_px)``), each prompted through
  ``BoxRefiner.logits`` on its crop, fused with nnU-Net's probability (``HybridSettings.fusion``;
  by default the engine's vote, 0.7 nnU-Net + 0.3 SAM);
- ``sam_nnunet_box``: the same prompts' SAM masks alone (logit > 0, united), i.e. the research
  design's hybrid, so that the table shows what the fusion adds;
- ``sam_gt_box``: SAM with the ground-truth box (tight + ``boxes.PAD_PX``), default settings;
- ``readers``: each reader vs the 50 % consensus of the other readers (leave-one-out), averaged
  over the readers of the case (``detected`` only if every reader overlaps);
- ``threshold_gt_box``: HU > -600 inside the same GT box, largest component, holes filled.

Writes ``OUT/cases.csv`` (per case and method: DSC, IoU, precision, recall, detected),
``OUT/summary.json``, ``OUT/summary.md``, ``OUT/run.json`` (settings, timings) and
``OUT/figures/{best_worst,pixel_comparison}.png``. ``--methods`` runs a subset (nnunet and hybrid
always run); ``--save-masks`` also writes ``OUT/masks/<case_id>.npz``: uint8 ``[y, x]`` masks of
the central slice (full slice) under the keys ``consensus``, ``nnunet`` and ``hybrid`` (the
inputs of ``classify``).
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from NoduleSAMLib.boxes import EXPANSION, PAD_PX
from NoduleSAMLib.refine import OUTSIDE_LOGIT, RefineSettings, detector_sam_vote

from .metrics import overlap, summarize, threshold_in_box

METHODS = ("nnunet", "hybrid", "sam_nnunet_box", "sam_gt_box", "readers", "threshold_gt_box")
SUMMARY_KEYS = ("dsc_mean", "dsc_median", "dsc_std", "iou_mean", "iou_median", "iou_std",
                "precision_mean", "recall_mean", "missed")
METRICS = ("dsc", "iou", "precision", "recall", "detected")


@dataclass
class HybridSettings:
    """Knobs of the hybrid. The defaults are the engine's: its prompt box, SAM's own threshold and
    the detector weight of ``RefineSettings`` (chosen on ``val`` with benchmarks/hybrid_sweep.py),
    so that the evaluation measures what the product does. BENCHMARKS.md reports them.

    expansion / pad_px: each side of a component's contour box moves out by
      ``expansion`` x the box size + ``pad_px`` pixels.
    crop_margin_px / min_crop_px: the refiner's crop around the box (``RefineSettings``).
    fusion: how SAM's answer and nnU-Net's combine:
      ``soft``: soft voting, ``nnunet_weight`` x nnU-Net's foreground probability +
      (1 - ``nnunet_weight``) x SAM's probability > 0.5, SAM's probability being
      sigmoid(logit - ``sam_threshold``) (the maximum over the components' prompts);
      ``sam``: the SAM masks alone (logit > ``sam_threshold``), united: the research design's hybrid;
      ``union``: each SAM mask united with its nnU-Net component.
    gate_iou: (``sam`` and ``union``) keep the nnU-Net component when IoU(SAM mask, component)
      < gate_iou (0 = off).
    min_component_px: nnU-Net components smaller than this are dropped before prompting.
    threshold_hu: the classical baseline's threshold.
    """

    expansion: float = EXPANSION
    pad_px: float = PAD_PX
    crop_margin_px: int = RefineSettings.crop_margin_px
    min_crop_px: int = RefineSettings.min_crop_px
    fusion: str = "soft"
    nnunet_weight: float = RefineSettings.detector_weight
    sam_threshold: float = RefineSettings.sam_threshold
    gate_iou: float = 0.0
    min_component_px: int = 1
    threshold_hu: float = -600.0

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, not '{self.fusion}'")
        if not 0.0 <= self.nnunet_weight <= 1.0:
            raise ValueError(f"nnunet_weight must lie in [0, 1], not {self.nnunet_weight}")


FUSIONS = ("soft", "sam", "union")


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------
def nnunet_slice(detector, hu2d: np.ndarray, spacing_yx) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net on one slice, predicted as a 1-slice volume: ``(foreground probability, mask)``,
    ``[y, x]`` each (float32, bool)."""
    from NoduleSAMLib.volume import CTVolume

    volume = CTVolume.from_lps(hu2d[None].astype(np.float32),
                               (float(spacing_yx[1]), float(spacing_yx[0]), 999.0), (0.0, 0.0, 0.0))
    detection = detector.predict(volume)
    mask = np.asarray(detection.mask[0], bool)
    return detection.probability[0], mask


def sam_logits_per_component(refiner, hu2d: np.ndarray, nnunet_mask: np.ndarray,
                             settings: HybridSettings, image_key):
    """One SAM prompt per 8-connected nnU-Net component: ``[(component, logits)]``, full size."""
    from NoduleSAMLib.boxes import box2d_from_contours
    from NoduleSAMLib.geometry import expand_box2d

    labels, n = ndimage.label(nnunet_mask, structure=np.ones((3, 3), bool))
    out = []
    for index in range(1, n + 1):
        component = labels == index
        if component.sum() < settings.min_component_px:
            continue
        box = expand_box2d(box2d_from_contours(component), settings.expansion, settings.pad_px,
                           hu2d.shape)
        out.append((component, refiner.logits(hu2d.astype(np.float32), box, image_key)))
    return out


def fuse(prompts, probability: np.ndarray, settings: HybridSettings) -> tuple[np.ndarray, int]:
    """The hybrid mask from ``sam_logits_per_component``'s output and nnU-Net's probability.

    Returns (mask, number of gated prompts)."""
    s = settings
    if s.fusion == "soft":
        logits = np.full(probability.shape, OUTSIDE_LOGIT, np.float32)
        for _, component_logits in prompts:
            logits = np.maximum(logits, component_logits)
        return detector_sam_vote(probability, logits, s.nnunet_weight, s.sam_threshold), 0
    out = np.zeros(probability.shape, bool)
    gated = 0
    for component, logits in prompts:
        mask = logits > s.sam_threshold
        if s.fusion == "union":
            mask = mask | component
        if s.gate_iou > 0 and overlap(mask, component)["iou"] < s.gate_iou:
            mask = component
            gated += 1
        out |= mask
    return out, gated


def gt_box(consensus: np.ndarray, pad_px: float) -> np.ndarray:
    from NoduleSAMLib.geometry import box2d_of_mask, expand_box2d

    return expand_box2d(box2d_of_mask(consensus), 0.0, pad_px, consensus.shape)


def readers_loo(readers: np.ndarray) -> dict:
    """Each reader vs the >= 50 % consensus of the others, metrics averaged over the readers."""
    readers = np.asarray(readers, bool)
    if len(readers) < 2:
        return {k: float("nan") for k in ("dsc", "iou", "precision", "recall")} | {"detected": False}
    rows = []
    for r in range(len(readers)):
        others = np.delete(readers, r, axis=0)
        rows.append(overlap(readers[r], others.mean(axis=0) >= 0.5))
    out = {k: float(np.mean([row[k] for row in rows])) for k in ("dsc", "iou", "precision", "recall")}
    out["detected"] = all(row["detected"] for row in rows)
    return out


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def _wilcoxon(a, b) -> float | None:
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 1 or np.allclose(a, b):
        return None  # undefined: no non-zero difference
    try:
        p = float(wilcoxon(a, b).pvalue)
    except ValueError:
        return None
    return None if math.isnan(p) else p


def summarize_rows(rows: list[dict]) -> dict:
    summary: dict = {"n_cases": len(rows)}
    for method in [m for m in METHODS if f"{m}_dsc" in rows[0]]:
        values = [{k: row[f"{method}_{k}"] for k in METRICS} for row in rows
                  if not (isinstance(row[f"{method}_dsc"], float) and math.isnan(row[f"{method}_dsc"]))]
        stats = summarize(values)
        summary[method] = {k: stats[k] for k in SUMMARY_KEYS}
    summary["wilcoxon_p_dsc"] = _wilcoxon([r["hybrid_dsc"] for r in rows], [r["nnunet_dsc"] for r in rows])
    summary["wilcoxon_p_iou"] = _wilcoxon([r["hybrid_iou"] for r in rows], [r["nnunet_iou"] for r in rows])
    return summary


def summary_markdown(summary: dict, title: str) -> str:
    def f(v, digits=3):
        return "–" if v is None else f"{v:.{digits}f}"

    lines = [f"# {title}", "", f"{summary['n_cases']} cases (central slice, 50 % consensus as ground truth)", "",
             "| method | DSC mean | DSC median | DSC std | IoU mean | IoU median | IoU std | precision | recall | missed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in [m for m in METHODS if m in summary]:
        s = summary[m]
        lines.append(f"| {m} | {f(s['dsc_mean'])} | {f(s['dsc_median'])} | {f(s['dsc_std'])} | "
                     f"{f(s['iou_mean'])} | {f(s['iou_median'])} | {f(s['iou_std'])} | "
                     f"{f(s['precision_mean'])} | {f(s['recall_mean'])} | {s['missed']} |")
    p_dsc, p_iou = summary["wilcoxon_p_dsc"], summary["wilcoxon_p_iou"]
    lines += ["", f"Wilcoxon signed-rank, hybrid vs nnunet: p(DSC) = {f(p_dsc, 4)}, p(IoU) = {f(p_iou, 4)}", ""]
    return "\n".join(lines)


def _window(hu):
    return np.clip((np.asarray(hu, float) + 1350.0) / 1500.0, 0, 1)


def make_figures(records: list[dict], rows: list[dict], folder: Path, n_show: int = 4) -> list[Path]:
    """best_worst.png (contours, best/worst hybrid DSC) and pixel_comparison.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    order = np.argsort([r["hybrid_dsc"] for r in rows])
    n = min(n_show, max(1, len(rows) // 2))  # few cases: best and worst do not overlap
    worst, best = list(order[:n]), list(order[::-1][:n])
    paths = []

    fig, axes = plt.subplots(2, n, figsize=(3 * n, 6.4), squeeze=False)
    for row_axes, picks, label in ((axes[0], best, "best"), (axes[1], worst, "worst")):
        for ax, i in zip(row_axes, picks):
            rec = records[i]
            ax.imshow(_window(rec["hu"]), cmap="gray", interpolation="nearest")
            for mask, colour in ((rec["gt"], "red"), (rec["nnunet"], "lime"), (rec["hybrid"], "yellow")):
                if mask.any():
                    ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2)
            ax.set_title(f"{label}: {rows[i]['case_id']}\nhybrid {rows[i]['hybrid_dsc']:.2f} / "
                         f"nnU-Net {rows[i]['nnunet_dsc']:.2f}", fontsize=8)
            ax.axis("off")
        for ax in row_axes[len(picks):]:
            ax.axis("off")
    fig.suptitle("contours: red = ground truth (consensus 50 %), green = nnU-Net, yellow = hybrid", fontsize=9)
    fig.tight_layout()
    paths.append(folder / "best_worst.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    picks = sorted(set(best) | set(worst), key=lambda i: rows[i]["hybrid_dsc"] - rows[i]["nnunet_dsc"])
    picks = picks[: 2 * n]
    cols = min(4, len(picks)) or 1
    nrow = max(1, math.ceil(len(picks) / cols))
    fig, axes = plt.subplots(nrow, cols, figsize=(3 * cols, 3.2 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks):
        rec = records[i]
        rgb = np.repeat(_window(rec["hu"])[..., None], 3, axis=2)
        gt_only = rec["gt"] & ~rec["nnunet"] & ~rec["hybrid"]
        added = rec["hybrid"] & ~rec["nnunet"]
        alpha = 0.6
        for mask, colour in ((gt_only, (1, 0, 0)), (rec["nnunet"], (0, 1, 0)), (added, (1, 1, 0))):
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.array(colour)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(f"{rows[i]['case_id']}\nDSC nnU-Net {rows[i]['nnunet_dsc']:.2f} -> hybrid "
                     f"{rows[i]['hybrid_dsc']:.2f}", fontsize=8)
    fig.suptitle("red: ground truth only, green: nnU-Net, yellow: pixels only the hybrid adds", fontsize=9)
    fig.tight_layout()
    paths.append(folder / "pixel_comparison.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def evaluate(voi_dir: str | Path, split: str, out: str | Path, model: str | Path = "nodule-voi",
             refiner_name: str = "litemedsam", checkpoint: str | Path | None = None,
             limit: int | None = None, settings: HybridSettings | None = None, device: str = "cpu",
             progress: bool = True, threads: int | None = None, bf16: bool = False,
             methods=METHODS, save_masks: bool = False) -> dict:
    import torch
    from tqdm import tqdm

    from NoduleSAMLib.boxes import PAD_PX
    from NoduleSAMLib.detect import Detector
    from NoduleSAMLib.models import build_sam, detector_folder
    from NoduleSAMLib.refine import BoxRefiner, RefineSettings

    from .lidc import read_cases_csv, voi_case

    if threads:
        torch.set_num_threads(int(threads))
    settings = settings or HybridSettings()
    methods = {"nnunet", "hybrid", *methods}
    unknown = methods - set(METHODS)
    if unknown:
        from NoduleSAMLib.errors import NoduleSAMError

        raise NoduleSAMError(f"unknown method(s) {', '.join(sorted(unknown))} in --methods; "
                             f"choose from {', '.join(METHODS)}")
    voi_dir, out = Path(voi_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if save_masks:
        (out / "masks").mkdir(exist_ok=True)
    t_start = time.time()
    folder = detector_folder(model)
    detector = Detector(folder, device=device)
    detector.predictor.allow_tqdm = False
    detector.predictor.verbose = False
    sam = build_sam(refiner_name, checkpoint, device)
    gt_refiner = BoxRefiner(sam, RefineSettings(), bf16=bf16)
    hybrid_refiner = BoxRefiner(sam, RefineSettings(crop_margin_px=settings.crop_margin_px,
                                                    min_crop_px=settings.min_crop_px), bf16=bf16)

    table = [r for r in read_cases_csv(voi_dir / "cases.csv") if r["split"] == split]
    if not table:
        raise SystemExit(f"{voi_dir / 'cases.csv'}: no cases in split '{split}'")
    table = table[:limit] if limit else table
    rows, records = [], []
    timing = {"nnunet_s": 0.0, "hybrid_s": 0.0, "sam_gt_box_s": 0.0}
    with torch.inference_mode():
        for entry in tqdm(table, desc=f"evaluate {split}", unit="case", disable=not progress):
            case = voi_case(voi_dir, entry)
            hu = case.hu.astype(np.float32)
            gt = case.consensus > 0
            t = time.time()
            nn_probability, nn_mask = nnunet_slice(detector, hu, case.spacing)
            timing["nnunet_s"] += time.time() - t
            t = time.time()
            prompts = sam_logits_per_component(hybrid_refiner, hu, nn_mask, settings,
                                               ("hybrid", case.case_id))
            hy_mask, n_gated = fuse(prompts, nn_probability, settings)
            timing["hybrid_s"] += time.time() - t
            sam_only = fuse(prompts, nn_probability, replace(settings, fusion="sam", gate_iou=0.0,
                                                             sam_threshold=0.0))[0]
            box = gt_box(gt, PAD_PX)
            t = time.time()
            sam_mask = gt_refiner.segment(hu, box, ("gt", case.case_id)) if "sam_gt_box" in methods else None
            timing["sam_gt_box_s"] += time.time() - t
            thr_mask = threshold_in_box(hu, box, settings.threshold_hu)
            if save_masks:
                np.savez_compressed(out / "masks" / f"{case.case_id}.npz", consensus=gt.astype(np.uint8),
                                    nnunet=nn_mask.astype(np.uint8), hybrid=hy_mask.astype(np.uint8))
            row = {"case_id": case.case_id, "patient_id": case.patient_id, "split": split,
                   "n_readers": len(case.readers), "diameter_mm": entry.get("diameter_mm", ""),
                   "texture_median": entry.get("texture_median", ""), "k": case.k,
                   "gt_px": int(gt.sum()), "nnunet_components": int(ndimage.label(nn_mask, np.ones((3, 3)))[1]),
                   "hybrid_prompts": len(prompts), "hybrid_gated": n_gated}
            for method, mask in (("nnunet", nn_mask), ("hybrid", hy_mask), ("sam_nnunet_box", sam_only),
                                 ("sam_gt_box", sam_mask),
                                 ("threshold_gt_box", thr_mask)):
                if method in methods:
                    m = overlap(mask, gt)
                    row.update({f"{method}_{k}": m[k] for k in METRICS})
            if "readers" in methods:
                m = readers_loo(case.readers)
                row.update({f"readers_{k}": m[k] for k in METRICS})
            rows.append(row)
            records.append({"hu": case.hu, "gt": gt, "nnunet": nn_mask, "hybrid": hy_mask})

    with open(out / "cases.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    summary = summarize_rows(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    title = f"Evaluation on split '{split}' (model {model}, refiner {refiner_name})"
    md = summary_markdown(summary, title)
    md += ("\nHybrid settings: " + ", ".join(f"{k} = {v}" for k, v in asdict(settings).items()) + "\n")
    (out / "summary.md").write_text(md)
    figures = make_figures(records, rows, out / "figures")
    run = {"split": split, "limit": limit, "model": str(folder), "refiner": refiner_name,
           "checkpoint": str(checkpoint) if checkpoint else None, "device": device,
           "threads": torch.get_num_threads(), "bf16": bf16,
           "methods": [m for m in METHODS if m in methods], "masks": "masks" if save_masks else None,
           "settings": asdict(settings), "gt_box_pad_px": PAD_PX, "timing_s": timing,
           "encoder_calls": {"hybrid": hybrid_refiner.encoder_calls, "sam_gt_box": gt_refiner.encoder_calls},
           "wall_s": time.time() - t_start, "figures": [str(p.relative_to(out)) for p in figures]}
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------------------------
# command line: nodulesam-train evaluate
# --------------------------------------------------------------------------------------------
def _cmd_evaluate(args) -> int:
    settings = HybridSettings(
        expansion=args.expansion, pad_px=args.pad_px, crop_margin_px=args.crop_margin,
        min_crop_px=args.min_crop, fusion=args.fusion, nnunet_weight=args.nnunet_weight,
        sam_threshold=args.sam_threshold, gate_iou=args.gate_iou,
        min_component_px=args.min_component_px, threshold_hu=args.threshold_hu)
    summary = evaluate(args.voi_dir, args.split, args.out, args.model, args.refiner, args.checkpoint,
                       args.limit, settings, args.device, threads=args.threads, bf16=args.bf16,
                       methods=args.methods.split(",") if args.methods else METHODS,
                       save_masks=args.save_masks)
    print((Path(args.out) / "summary.md").read_text())
    return 0 if summary["n_cases"] else 1


def add_parser(subparsers) -> None:
    d = HybridSettings()
    p = subparsers.add_parser("evaluate", help="nnU-Net vs nnU-Net + SAM vs references on VOI central slices")
    p.add_argument("--voi-dir", type=Path, required=True)
    p.add_argument("--split", required=True, help="train / val / test")
    p.add_argument("--model", default="nodule-voi", help="nnU-Net detector: registry name or results folder")
    p.add_argument("--refiner", default="litemedsam", help="SAM-family refiner registry name")
    p.add_argument("--checkpoint", type=Path, default=None, help="refiner checkpoint (non-bundled refiners)")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases of the split")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--bf16", action="store_true", help="SAM image encoder under bfloat16 autocast (faster on CPU)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {','.join(METHODS)} (default: all; nnunet and "
                        "hybrid always run), e.g. nnunet,hybrid to skip SAM with the GT box")
    p.add_argument("--save-masks", action="store_true",
                   help="also write OUT/masks/<case_id>.npz (uint8 consensus, nnunet, hybrid masks "
                        "of the central slice), the inputs of classify")
    p.add_argument("--expansion", type=float, default=d.expansion, help="hybrid box expansion (fraction of size)")
    p.add_argument("--pad-px", type=float, default=d.pad_px, help="hybrid box padding (px)")
    p.add_argument("--crop-margin", type=int, default=d.crop_margin_px, help="hybrid crop margin (px)")
    p.add_argument("--min-crop", type=int, default=d.min_crop_px, help="hybrid smallest crop side (px)")
    p.add_argument("--fusion", choices=FUSIONS, default=d.fusion,
                   help="soft: weighted vote of the nnU-Net and SAM probabilities; sam: SAM's masks "
                        "alone (the research design); union: SAM mask | nnU-Net component")
    p.add_argument("--nnunet-weight", type=float, default=d.nnunet_weight,
                   help="soft fusion: weight of nnU-Net's probability (SAM's is 1 minus this)")
    p.add_argument("--sam-threshold", type=float, default=d.sam_threshold,
                   help="SAM mask logit threshold (SAM's own is 0; lower gives larger masks)")
    p.add_argument("--gate-iou", type=float, default=d.gate_iou,
                   help="sam/union fusion: keep the nnU-Net component when IoU(SAM, nnU-Net) < this (0 = off)")
    p.add_argument("--min-component-px", type=int, default=d.min_component_px)
    p.add_argument("--threshold-hu", type=float, default=d.threshold_hu, help="classical baseline threshold")
    p.set_defaults(func=_cmd_evaluate)
