"""The YOLO11 instance-segmentation baseline, trained from scratch and scored by ``evaluate``'s protocol.

``nodulesam-train baseline-yolo --voi-dir <lidc>/voi --out OUT`` does, in order:

1. **Export** (``OUT/dataset``): the same 2D images as the ``nodule-voi`` model, the central
   (largest 50 %-consensus) axial slice of each VOI (:func:`detector_data.voi_central_slices`),
   of ``train`` for training and of ``val`` for Ultralytics' per-epoch validation (which keeps
   ``best.pt``). Images are HU in the window :data:`lidc.WINDOW_HU` as 8-bit grey, 3 equal
   channels, at the crop's own size; labels are one polygon per 8-connected consensus component
   (:func:`mask_polygons`), class 0 ``nodule``.
2. **Training** (``OUT/train``): Ultralytics ``YOLO("yolo11<size>-seg.yaml")``, i.e. **from
   scratch** (no pretrained weights can be fetched here), Ultralytics' default optimiser and
   augmentation, no plots, AMP off unless ``--amp``.
3. **Scoring** with exactly :mod:`evaluate`'s protocol: on each case's central slice
   (:func:`lidc.voi_case`, the middle of the consensus z-range), the union of the predicted
   instance masks whose confidence is at least the threshold, at the slice's own resolution
   (Ultralytics ``retina_masks``), against the 50 % consensus with :func:`metrics.overlap`. An
   image where nothing reaches the threshold is empty: DSC 0 and not ``detected``.
   The threshold is the one with the highest mean DSC on ``val`` (unless ``--conf`` fixes it).
4. **Outputs** for every split in ``--predict-splits``: ``OUT/cases.csv`` (per case
   ``yolo_{dsc,iou,precision,recall,detected}``, the instances kept, whether the image was empty),
   ``OUT/masks/<case_id>.npz`` (key ``yolo``: uint8 ``[y, x]``, the central slice's mask),
   ``OUT/summary.json`` and ``OUT/summary.md``. With ``--against EVAL_DIR`` (an ``evaluate`` output
   of ``--eval-split``), the paired Wilcoxon signed-rank test YOLO vs hybrid on DSC and IoU and
   the YOLO row beside evaluate's rows.

Ultralytics is kept offline: ``YOLO_OFFLINE`` is set before it is imported (no online checks,
no telemetry, no automatic installs), the dataset check's font download is skipped, and no
pretrained weights are asked for.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from pathlib import Path

import numpy as np

from NoduleSAMLib.errors import NoduleSAMError

from .evaluate import METRICS, SUMMARY_KEYS, _wilcoxon
from .metrics import overlap, summarize

MODEL_SIZES = ("n", "s", "m", "l", "x")
CONF_GRID = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ULTRALYTICS_DEFAULT_CONF = 0.25
MIN_CONF = 0.001  # instances kept at prediction time; the threshold is applied afterwards
POLYGON_UPSAMPLE = 4


# --------------------------------------------------------------------------------------------
# Ultralytics, offline
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def offline_ultralytics():
    """Import Ultralytics with its online features off and yield the module.

    ``YOLO_OFFLINE`` must be set before ``ultralytics.utils`` is first imported (it decides
    ``ONLINE`` once). The dataset check asks for a plotting font it would download
    (``check_font``); the plots are off, so that call is skipped while inside this block."""
    os.environ.setdefault("YOLO_OFFLINE", "true")
    import ultralytics
    import ultralytics.data.utils as data_utils

    saved = data_utils.check_font
    data_utils.check_font = lambda *args, **kwargs: None
    try:
        yield ultralytics
    finally:
        data_utils.check_font = saved


# --------------------------------------------------------------------------------------------
# Dataset export
# --------------------------------------------------------------------------------------------
def mask_polygons(mask: np.ndarray, upsample: int = POLYGON_UPSAMPLE) -> list[np.ndarray]:
    """One polygon ``[n, 2]`` (x, y) per outer contour of ``mask``, in pixel-edge coordinates
    (0 = the left edge of column 0, W = the right edge of the last column).

    OpenCV traces the centres of the boundary pixels, which would cut half a pixel off every side
    of a 5-pixel nodule; tracing the mask upsampled ``upsample`` times keeps the outline within
    ``0.5 / upsample`` pixel of the true edge."""
    import cv2

    big = np.kron(np.asarray(mask, np.uint8), np.ones((upsample, upsample), np.uint8))
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for contour in contours:
        points = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / upsample
        if len(points) >= 3:
            out.append(points)
    return out


def grey_bgr(hu: np.ndarray) -> np.ndarray:
    """HU ``[y, x]`` -> uint8 ``[y, x, 3]``: the window :data:`lidc.WINDOW_HU`, three equal channels."""
    from .lidc import window01

    grey = np.round(window01(hu) * 255.0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def export_dataset(voi_dir: str | Path, folder: str | Path, limit: int | None = None) -> Path:
    """``folder/{images,labels}/{train,val}`` and ``folder/data.yaml`` (absolute paths).

    ``limit``: at most this many cases per split (the seeded choice of ``voi_central_slices``)."""
    import cv2

    from .detector_data import voi_central_slices
    from .lidc import WINDOW_HU

    voi_dir, folder = Path(voi_dir).resolve(), Path(folder).resolve()
    if voi_dir.name != "voi" or not (voi_dir / "cases.csv").is_file():
        raise NoduleSAMError(f"{voi_dir}: expected the LIDC VOI folder (<lidc>/voi with cases.csv)")
    counts = {}
    for split in ("train", "val"):
        images, labels = folder / "images" / split, folder / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        slices = voi_central_slices(voi_dir.parent, split=split, limit=limit)
        for s in slices:
            cv2.imwrite(str(images / f"{s.name}.png"), grey_bgr(s.image))
            h, w = s.mask.shape
            lines = []
            for poly in mask_polygons(s.mask > 0):
                xy = np.clip(poly / np.array([w, h]), 0.0, 1.0)
                lines.append("0 " + " ".join(f"{v:.6f}" for v in xy.ravel()))
            (labels / f"{s.name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        counts[split] = len(slices)
    data = folder / "data.yaml"
    data.write_text(f"path: {folder}\ntrain: images/train\nval: images/val\nnames:\n  0: nodule\n")
    (folder / "export.json").write_text(json.dumps({
        "voi_dir": str(voi_dir), "images": counts, "slice": "largest 50 %-consensus area (as nodule-voi)",
        "window_hu": list(WINDOW_HU),
        "limit": limit}, indent=2) + "\n")
    return data


# --------------------------------------------------------------------------------------------
# Training and prediction
# --------------------------------------------------------------------------------------------
def train(data_yaml: str | Path, out: str | Path, model_size: str = "n", epochs: int = 60,
          imgsz: int = 128, batch: int = 16, device: str = "cpu", seed: int = 0,
          patience: int = 100, amp: bool = False, workers: int = 2, time_hours: float | None = None) -> Path:
    """Train ``yolo11<model_size>-seg`` from its YAML; returns ``out/train/weights/best.pt``.

    ``time_hours``: Ultralytics' ``time``: train for that long instead of ``epochs`` (it sets the
    number of epochs from the first epoch's duration, so the schedule still completes)."""
    if model_size not in MODEL_SIZES:
        raise NoduleSAMError(f"model size must be one of {', '.join(MODEL_SIZES)}, not '{model_size}'")
    with offline_ultralytics() as ul:
        model = ul.YOLO(f"yolo11{model_size}-seg.yaml", task="segment")
        model.train(data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, device=device,
                    seed=seed, deterministic=True, pretrained=False, amp=amp, plots=False,
                    patience=patience, workers=workers, project=str(Path(out).resolve()),
                    name="train", exist_ok=True, verbose=False, time=time_hours)
    weights = Path(out).resolve() / "train" / "weights" / "best.pt"
    if not weights.is_file():
        raise NoduleSAMError(f"YOLO training wrote no {weights}; see the Ultralytics log above")
    return weights


def predict_instances(weights: str | Path, images_hu: list[np.ndarray], imgsz: int,
                      device: str = "cpu", batch: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image ``(masks bool [n, y, x] at the image's own size, confidences [n])``, every
    instance of confidence >= :data:`MIN_CONF`."""
    with offline_ultralytics() as ul:
        model = ul.YOLO(str(weights), task="segment")
        out = []
        for start in range(0, len(images_hu), batch):
            chunk = images_hu[start:start + batch]
            results = model.predict([grey_bgr(hu) for hu in chunk], imgsz=imgsz, conf=MIN_CONF,
                                    retina_masks=True, device=device, verbose=False)
            for hu, r in zip(chunk, results):
                if r.masks is None or len(r.boxes) == 0:
                    out.append((np.zeros((0,) + hu.shape, bool), np.zeros(0, np.float32)))
                    continue
                masks = r.masks.data.cpu().numpy() > 0.5
                if masks.shape[1:] != hu.shape:
                    raise NoduleSAMError(f"YOLO mask shape {masks.shape[1:]} != slice {hu.shape}")
                out.append((masks, r.boxes.conf.cpu().numpy().astype(np.float32)))
    return out


def epochs_trained(weights: Path, default: int) -> int:
    """Epochs in the training run's ``results.csv`` beside ``weights/`` (``default`` without it)."""
    results = weights.parent.parent / "results.csv"
    if not results.is_file():
        return default
    with open(results, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def union_mask(masks: np.ndarray, conf: np.ndarray, threshold: float, shape) -> np.ndarray:
    keep = conf >= threshold
    return masks[keep].any(axis=0) if keep.any() else np.zeros(shape, bool)


def choose_conf(instances, gts, grid=CONF_GRID) -> tuple[float, list[dict]]:
    """The threshold of ``grid`` with the highest mean DSC (ties: the lower one) and the sweep."""
    sweep = []
    for t in grid:
        scores = [overlap(union_mask(m, c, t, gt.shape), gt) for (m, c), gt in zip(instances, gts)]
        sweep.append({"conf": t, "dsc_mean": float(np.mean([s["dsc"] for s in scores])),
                      "missed": int(sum(not s["detected"] for s in scores)),
                      "empty": int(sum(not (c >= t).any() for _, c in instances))})
    best = max(sweep, key=lambda row: (row["dsc_mean"], -row["conf"]))
    return best["conf"], sweep


# --------------------------------------------------------------------------------------------
# Scoring by evaluate's protocol
# --------------------------------------------------------------------------------------------
def split_cases(voi_dir: Path, split: str, limit: int | None):
    """evaluate's cases of ``split``: the cases.csv rows (first ``limit``) and their central slices."""
    from .lidc import read_cases_csv, voi_case

    table = [r for r in read_cases_csv(voi_dir / "cases.csv") if r["split"] == split]
    if not table:
        raise NoduleSAMError(f"{voi_dir / 'cases.csv'}: no cases in split '{split}'")
    table = table[:limit] if limit else table
    return table, [voi_case(voi_dir, entry) for entry in table]


def case_row(entry: dict, case, mask: np.ndarray, n_instances: int, split: str) -> dict:
    gt = case.consensus > 0
    row = {"case_id": case.case_id, "patient_id": case.patient_id, "split": split,
           "n_readers": len(case.readers), "diameter_mm": entry.get("diameter_mm", ""),
           "texture_median": entry.get("texture_median", ""), "k": case.k, "gt_px": int(gt.sum()),
           "yolo_instances": n_instances, "yolo_empty": n_instances == 0}
    m = overlap(mask, gt)
    row.update({f"yolo_{k}": m[k] for k in METRICS})
    return row


def summarize_yolo(rows: list[dict]) -> dict:
    stats = summarize([{k: r[f"yolo_{k}"] for k in METRICS} for r in rows])
    out = {k: stats[k] for k in SUMMARY_KEYS}
    out["empty"] = int(sum(r["yolo_empty"] for r in rows))
    return out


def read_eval(eval_dir: str | Path) -> tuple[dict, dict[str, dict]]:
    """An ``evaluate`` output: (summary.json, cases.csv rows by case id)."""
    eval_dir = Path(eval_dir)
    if not (eval_dir / "summary.json").is_file() or not (eval_dir / "cases.csv").is_file():
        raise NoduleSAMError(f"{eval_dir}: not an evaluate output (summary.json and cases.csv expected)")
    with open(eval_dir / "cases.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    return json.loads((eval_dir / "summary.json").read_text()), rows


def wilcoxon_against(yolo_rows: list[dict], eval_rows: dict[str, dict], method: str = "hybrid") -> dict:
    """Paired Wilcoxon signed-rank, YOLO vs ``method``, over the cases both scored."""
    ids = [r["case_id"] for r in yolo_rows]
    missing = [i for i in ids if i not in eval_rows]
    if missing:
        raise NoduleSAMError(f"--against: {len(missing)} YOLO cases (e.g. {missing[0]}) are not in the "
                             "evaluate output; run evaluate on the same split and --limit")
    out = {"method": method, "n_cases": len(ids)}
    for k in ("dsc", "iou"):
        # at the precision of the cases.csv files, so that equal scores pair as ties (as in the report)
        yolo = [round(float(r[f"yolo_{k}"]), 6) for r in yolo_rows]
        other = [float(eval_rows[i][f"{method}_{k}"]) for i in ids]
        out[f"p_{k}"] = _wilcoxon(yolo, other)
        out[f"{method}_{k}_mean"] = float(np.mean(other))
    return out


def method_table(summaries: dict[str, dict]) -> list[str]:
    """evaluate's Markdown table, one row per ``{method: summary}`` (the summary keys of evaluate)."""
    def f(v, digits=3):
        return "–" if v is None else f"{v:.{digits}f}"

    lines = ["| method | DSC mean | DSC median | DSC std | IoU mean | IoU median | IoU std | precision | recall | missed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | {f(s['dsc_mean'])} | {f(s['dsc_median'])} | {f(s['dsc_std'])} | "
                     f"{f(s['iou_mean'])} | {f(s['iou_median'])} | {f(s['iou_std'])} | "
                     f"{f(s['precision_mean'])} | {f(s['recall_mean'])} | {s['missed']} |")
    return lines


def format_p(p) -> str:
    return "–" if p is None else (f"{p:.2e}" if p < 1e-4 else f"{p:.4f}")


def summary_markdown(summary: dict, eval_summary: dict | None = None) -> str:
    split, s = summary["split"], summary
    m = s["model"]
    lines = [f"# YOLO11{m['size']}-seg baseline on split '{split}'", "",
             f"{s['n_cases']} cases (central slice, 50 % consensus as ground truth, evaluate's protocol). "
             f"Trained from scratch (no pretrained weights) on the `train` central slices, "
             f"imgsz {m['imgsz']}, {m['epochs']} epochs; confidence threshold {s['conf']} "
             f"({s['conf_source']}).", ""]
    rows = {}
    if eval_summary:
        rows.update({k: eval_summary[k] for k in ("nnunet", "hybrid", "sam_nnunet_box", "sam_gt_box",
                                                  "readers", "threshold_gt_box") if k in eval_summary})
    rows["yolo"] = s["yolo"]
    lines += method_table(rows)
    lines += ["", f"YOLO found nothing on {s['yolo']['empty']} of {s['n_cases']} images and missed "
                  f"(no overlap with the ground truth) {s['yolo']['missed']}; the research design's "
                  "YOLO11m-seg missed 260 of 475.",
              f"At Ultralytics' default confidence {ULTRALYTICS_DEFAULT_CONF}: DSC "
              f"{s['yolo_at_default_conf']['dsc_mean']:.3f}, empty {s['yolo_at_default_conf']['empty']}, "
              f"missed {s['yolo_at_default_conf']['missed']}."]
    w = s.get("wilcoxon_vs_hybrid")
    if w:
        lines += ["", f"Wilcoxon signed-rank, yolo vs hybrid ({w['n_cases']} paired cases): "
                      f"p(DSC) = {format_p(w['p_dsc'])}, p(IoU) = {format_p(w['p_iou'])}"]
        if eval_summary and eval_summary.get("wilcoxon_p_dsc", "absent") != "absent":
            lines.append(f"Wilcoxon signed-rank, hybrid vs nnunet (evaluate): p(DSC) = "
                         f"{format_p(eval_summary['wilcoxon_p_dsc'])}, p(IoU) = "
                         f"{format_p(eval_summary['wilcoxon_p_iou'])}")
    other = [f"{name}: DSC {v['yolo']['dsc_mean']:.3f}, empty {v['yolo']['empty']} / {v['n_cases']}"
             + (" (in-distribution: YOLO trained on it)" if name == "train" else "")
             for name, v in s["splits"].items() if name != split]
    if other:
        lines += ["", "Other splits at the same threshold: " + "; ".join(other) + "."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def run(voi_dir: str | Path, out: str | Path, model_size: str = "n", epochs: int = 60, imgsz: int = 128,
        batch: int = 16, device: str = "cpu", seed: int = 0, weights: str | Path | None = None,
        conf: float | None = None, predict_splits=("train", "val", "test"), eval_split: str = "test",
        against: str | Path | None = None, limit: int | None = None, threads: int | None = None,
        patience: int = 100, amp: bool = False, workers: int = 2, time_hours: float | None = None,
        progress: bool = True) -> dict:
    import torch
    from tqdm import tqdm

    if threads:
        torch.set_num_threads(int(threads))
    voi_dir, out = Path(voi_dir).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    eval_summary, eval_rows = read_eval(against) if against else (None, None)
    timing = {}
    t = time.time()
    if weights is None:
        data = export_dataset(voi_dir, out / "dataset", limit=limit)
        timing["export_s"] = time.time() - t
        t = time.time()
        weights = train(data, out, model_size, epochs, imgsz, batch, device, seed, patience, amp, workers,
                        time_hours)
        timing["train_s"] = time.time() - t
    weights = Path(weights)

    predict_splits = tuple(dict.fromkeys([*predict_splits, eval_split]))
    splits = list(dict.fromkeys([*predict_splits] + ([] if conf is not None else ["val"])))
    predicted = {}
    for split in tqdm(splits, desc="baseline-yolo predict", unit="split", disable=not progress):
        t = time.time()
        table, cases = split_cases(voi_dir, split, limit)
        instances = predict_instances(weights, [c.hu for c in cases], imgsz, device)
        predicted[split] = (table, cases, instances)
        timing[f"predict_{split}_s"] = time.time() - t

    sweep = None
    if conf is None:
        _, cases, instances = predicted["val"]
        conf, sweep = choose_conf(instances, [c.consensus > 0 for c in cases])
    (out / "masks").mkdir(exist_ok=True)
    all_rows, by_split = [], {}
    for split in splits:
        table, cases, instances = predicted[split]
        rows, default_rows = [], []
        for entry, case, (masks, confs) in zip(table, cases, instances):
            mask = union_mask(masks, confs, conf, case.hu.shape)
            if split in predict_splits:
                np.savez_compressed(out / "masks" / f"{case.case_id}.npz", yolo=mask.astype(np.uint8))
            rows.append(case_row(entry, case, mask, int((confs >= conf).sum()), split))
            default_rows.append(case_row(entry, case, union_mask(masks, confs, ULTRALYTICS_DEFAULT_CONF,
                                                                 case.hu.shape),
                                         int((confs >= ULTRALYTICS_DEFAULT_CONF).sum()), split))
        by_split[split] = {"rows": rows, "n_cases": len(rows), "yolo": summarize_yolo(rows),
                           "yolo_at_default_conf": summarize_yolo(default_rows)}
        if split in predict_splits:
            all_rows += rows

    with open(out / "cases.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(all_rows[0]))
        writer.writeheader()
        for row in all_rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    ev = by_split[eval_split]
    summary = {
        "split": eval_split, "n_cases": ev["n_cases"], "yolo": ev["yolo"],
        "yolo_at_default_conf": ev["yolo_at_default_conf"], "conf": conf,
        "conf_source": "best mean DSC on val" if sweep is not None else "given (--conf)",
        "conf_sweep_val": sweep,
        "splits": {k: {"n_cases": v["n_cases"], "yolo": v["yolo"]} for k, v in by_split.items()},
        "model": {"name": f"yolo11{model_size}-seg", "size": model_size, "from_scratch": True,
                  "imgsz": imgsz, "epochs": epochs_trained(weights, epochs), "time_hours": time_hours,
                  "batch": batch, "seed": seed, "weights": str(weights)},
        "limit": limit, "device": device, "timing_s": timing,
    }
    if eval_rows is not None:
        summary["against"] = str(Path(against).resolve())
        summary["wilcoxon_vs_hybrid"] = wilcoxon_against(ev["rows"], eval_rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary, eval_summary))
    return summary


# --------------------------------------------------------------------------------------------
# command line: nodulesam-train baseline-yolo
# --------------------------------------------------------------------------------------------
def _cmd_baseline_yolo(args) -> int:
    splits = tuple(s for s in args.predict_splits.split(",") if s)
    if args.conf is not None and not 0.0 < args.conf < 1.0:
        raise NoduleSAMError(f"--conf must lie in (0, 1), not {args.conf}")
    summary = run(args.voi_dir, args.out, args.model_size, args.epochs, args.imgsz, args.batch, args.device,
                  args.seed, args.weights, args.conf, splits, args.eval_split, args.against, args.limit,
                  args.threads, args.patience, args.amp, args.workers, args.time_hours)
    print((Path(args.out) / "summary.md").read_text())
    return 0 if summary["n_cases"] else 1


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("baseline-yolo", help="YOLO11-seg baseline: train from scratch, score by evaluate's protocol")
    p.add_argument("--voi-dir", type=Path, required=True, help="<lidc>/voi (with cases.csv)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model-size", choices=MODEL_SIZES, default="n",
                   help="yolo11<size>-seg (the design used m; n trains in about an hour on 2 CPU cores)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--imgsz", type=int, default=128, help="YOLO input size (px; crops are 43-91 px)")
    p.add_argument("--time-hours", type=float, default=None,
                   help="train for this long instead of --epochs (Ultralytics' time: the schedule is fitted)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patience", type=int, default=100, help="Ultralytics early stopping (epochs without gain)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision on cuda (Ultralytics' AMP self-check wants to download weights)")
    p.add_argument("--workers", type=int, default=2, help="data loader workers (Ultralytics uses 0 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", type=Path, default=None, help="a trained best.pt: skip export and training")
    p.add_argument("--conf", type=float, default=None,
                   help="confidence threshold (default: the best mean DSC on val)")
    p.add_argument("--predict-splits", default="train,val,test",
                   help="comma-separated splits whose masks and per-case rows are written "
                        "(--eval-split always is)")
    p.add_argument("--eval-split", default="test", help="the split summary.json reports")
    p.add_argument("--against", type=Path, default=None,
                   help="an evaluate output of --eval-split: Wilcoxon yolo vs hybrid, joint table")
    p.add_argument("--limit", type=int, default=None,
                   help="at most N cases per split (training: a seeded choice; scoring: the first N)")
    p.set_defaults(func=_cmd_baseline_yolo)
