"""``nodulesam-train evaluate-detection``: per-nodule FROC of the detector on held-out whole CTs.

    nodulesam-train evaluate-detection --split test --out out/detection/test

The scans are ``scans.HELD_OUT_SCANS``: no model of this project trained on them. Each is scored
as it is (its real lesions, and every false positive), and in copies into which real nodules of
the LIDC VOI ``--split`` (``val`` or ``test``; never ``train``) are pasted in 3D (``paste.py``), a
share of the split's nodules per scan, at most ``--per-copy`` per copy. Pasted nodules count as
lesions of their copy; the copy's own lesions are ignored there (they are counted once, on the
original), and false positives are counted on the originals only, so the rate per scan is that
of real scans. Real and pasted nodules are reported apart: pasted ones may be easier.

Rows (one FROC each): the detector's own score with no filter, after the lung gate, after the
flat-detection filter (the engine before the classifier), the classifier's score after both
filters, and the classifier alone (no filter). ``--calibrate`` (on ``--split val``) writes the
operating points ``high`` / ``balanced`` / ``specific`` (2, 1 and 1/4 false positives per scan)
into the classifier's ``model.json``.

Writes ``summary.json``, ``summary.md``, ``froc.png``, ``false_positives.csv`` and a thumbnail of
each false positive of the main row (``fp/``), with ``false_positives.png`` as a contact sheet.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import froc as froc_mod
from . import scans as scans_mod
from .detector_data import default_lidc_dir, read_cases

OPERATING_RATES = {"high": 2.0, "balanced": 1.0, "specific": 0.25}
SIZE_BINS = (("< 6 mm", 0.0, 6.0), ("6-10 mm", 6.0, 10.0), (">= 10 mm", 10.0, np.inf))


def texture_class(texture: float | None) -> str:
    """LIDC texture median -> ground glass (<= 2), part solid (2-4), solid (>= 4), or unknown."""
    if texture is None:
        return "unknown"
    return "ground glass" if texture <= 2 else "solid" if texture >= 4 else "part solid"


def evaluation_scans(split: str, names, lidc_dir: Path, per_copy: int, seed: int, log,
                     limit: int | None = None):
    """The held-out scans and their pasted copies: a list of ``(scan, counts_false_positives)``.

    Each scan gets an equal share of the split's nodules (at most ``limit``), pasted into copies
    of it, ``per_copy`` at a time."""
    from .paste import pasted_copies, read_voi

    excluded = set(scans_mod.TRAIN_SCANS) | set(scans_mod.HELD_OUT_PATIENTS)
    pool = sorted((c for c in read_cases(lidc_dir) if c["split"] == split and c["patient_id"] not in excluded),
                  key=lambda c: c["case_id"])
    rng = np.random.default_rng(seed)
    pool = [pool[i] for i in rng.permutation(len(pool))]
    out = []
    for number, name in enumerate(names):
        scan = scans_mod.load_scan(name, lidc_dir)
        out.append((scan, True))
        share = pool[number::len(names)][:limit]
        nodules = [(1000 + offset, read_voi(lidc_dir, case)) for offset, case in enumerate(share)]
        copies = pasted_copies(scan.volume.hu, scan.labels, scan.volume.spacing_zyx_mm, nodules, per_copy, rng)
        for copy, (canvas, labels, placed) in enumerate(copies):
            pasted = scans_mod.Scan(f"{name}+{split}{copy + 1}", replace(scan.volume, hu=canvas), labels,
                                    [scans_mod.Lesion(value, nodule.diameter_mm, nodule.texture, "pasted",
                                                      nodule.case_id) for value, nodule in placed],
                                    ignored=[lesion.value for lesion in scan.lesions] + list(scan.ignored))
            tried = len(nodules[copy * per_copy:(copy + 1) * per_copy])
            log(f"{pasted.name}: {len(pasted.lesions)} of {tried} nodules pasted")
            out.append((pasted, False))
    return out


def row_pipelines(detector, fpr):
    """The rows of the FROC table: name -> (pipeline, candidate stage, score attribute)."""
    from NoduleSAMLib.pipeline import Pipeline

    filtered = Pipeline(detector, None, fpr=fpr, blobs=False)
    rows = {"detector": (filtered, "detected", "detector_score"),
            "detector + lung gate": (filtered, "in_lungs", "detector_score"),
            "detector + lung gate + flat filter": (filtered, "not_flat", "detector_score")}
    if fpr is not None:
        rows["classifier after both filters"] = (filtered, "scored", "score")
        rows["classifier alone (no filter)"] = (Pipeline(detector, None, min_in_lungs=0.0, min_depth_ratio=0.0,
                                                         fpr=fpr, blobs=False), "scored", "score")
        rows["classifier, filters + blob candidates"] = (Pipeline(detector, None, fpr=fpr), "scored", "score")
    return rows


def evaluate(scans, detector, detector_folder: Path, fpr, cache_dir: Path | None, log) -> dict:
    """Candidates of every row on every scan, matched: row -> list of per-scan records."""
    from .detection_cache import cached_detection

    rows = row_pipelines(detector, fpr)
    results = {row: [] for row in rows}
    for scan, counts_fp in scans:
        start = time.perf_counter()
        detection = cached_detection(detector, detector_folder, scan.volume, cache_dir)
        staged = {}
        for row, (pipeline, stage, attribute) in rows.items():
            if id(pipeline) not in staged:
                staged[id(pipeline)] = pipeline.candidate_stages(scan.volume, detection)
            candidates = staged[id(pipeline)][stage]
            scores = [getattr(c, attribute) for c in candidates]
            outcome = froc_mod.match(candidates, scores, scan.labels, [l.value for l in scan.lesions], scan.ignored)
            results[row].append({"scan": scan, "counts_fp": counts_fp, "outcome": outcome, "candidates": candidates})
        log(f"{scan.name}: {time.perf_counter() - start:.0f} s")
    return results


def summarise(records: list[dict]) -> dict:
    """FROC of one row: all lesions, real ones and pasted ones apart."""
    n_scans = sum(r["counts_fp"] for r in records)
    fp_scores = [s for r in records if r["counts_fp"] for s in r["outcome"].fp_scores]
    lesions = [(r["scan"], lesion, r["outcome"].lesion_scores.get(lesion.value)) for r in records
               for lesion in r["scan"].lesions]
    summary = {"scans": n_scans, "false_positives_total": len(fp_scores)}
    for group, keep in (("all", lambda l: True), ("real", lambda l: l.kind == "real"),
                        ("pasted", lambda l: l.kind == "pasted")):
        chosen = [(s, l, score) for s, l, score in lesions if keep(l)]
        found = [score for _, _, score in chosen if score is not None]
        summary[group] = {"lesions": len(chosen), "found_at_any_score": len(found),
                          **froc_mod.froc(found, fp_scores, len(chosen), n_scans)}
    threshold_1fp = summary["all"]["thresholds"][froc_mod.FP_RATES.index(1.0)]
    strata = {}
    for label, low, high in SIZE_BINS:
        strata[f"size {label}"] = [(l, score) for _, l, score in lesions if low <= l.diameter_mm < high]
    for name in ("solid", "part solid", "ground glass", "unknown"):
        strata[f"texture {name}"] = [(l, score) for _, l, score in lesions if texture_class(l.texture) == name]
    # LUNA16 keeps only scans of <= 2.5 mm slices; on thicker ones a small nodule fills one slice
    for label, thin in (("<= 2.5 mm", True), ("> 2.5 mm", False)):
        strata[f"slices {label}"] = [(l, score) for s, l, score in lesions
                                     if (s.volume.spacing_zyx_mm[0] <= 2.5 + 1e-6) == thin]
    summary["strata"] = {
        key: {"lesions": len(items),
              "sensitivity_any": float(np.mean([s is not None for _, s in items])) if items else None,
              "sensitivity_at_1fp": float(np.mean([s is not None and s >= threshold_1fp for _, s in items]))
              if items else None}
        for key, items in strata.items()}
    summary["lesion_list"] = [{"scan": s.name, "lesion": l.value, "kind": l.kind, "source": l.source,
                               "diameter_mm": round(l.diameter_mm, 1), "texture": l.texture,
                               "score": score} for s, l, score in lesions]
    return summary


def false_positive_rows(records: list[dict]) -> list[dict]:
    """Every false positive of a row on the real scans: where, how big, what score."""
    out = []
    for record in records:
        if not record["counts_fp"]:
            continue
        scan = record["scan"]
        for index in record["outcome"].fp_index:
            candidate = record["candidates"][index]
            z0, _, y0, _, x0, _ = candidate.box_ijk
            points = np.argwhere(candidate.detector_mask) + [z0, y0, x0]
            centre = points.mean(axis=0)
            lps = scan.volume.ijk_to_lps @ np.r_[centre[::-1], 1.0]
            out.append({"scan": scan.name, "name": candidate.name, "score": round(float(candidate.score), 4),
                        "source": candidate.source,
                        "detector_score": None if candidate.detector_score is None else round(float(candidate.detector_score), 4),
                        "volume_mm3": round(float(candidate.detected_volume_mm3), 1),
                        "slices": int(candidate.detector_mask.any(axis=(1, 2)).sum()),
                        "center_ijk_zyx": [round(float(v), 1) for v in centre],
                        "center_lps_mm": [round(float(v), 1) for v in lps[:3]],
                        "box_ijk": list(candidate.box_ijk), "_candidate": candidate, "_scan": scan})
    out.sort(key=lambda r: -r["score"])
    return out


def thumbnail(ax, scan, candidate, title: str, side_mm: float = 64.0) -> None:
    """An axial crop through the candidate's largest section, lung window, its mask outlined."""
    z0, _, y0, _, x0, _ = candidate.box_ijk
    areas = candidate.detector_mask.sum(axis=(1, 2))
    z = int(np.argmax(areas))
    ys, xs = np.nonzero(candidate.detector_mask[z])
    cy, cx = ys.mean() + y0, xs.mean() + x0
    _, sy, sx = scan.volume.spacing_zyx_mm
    hy, hx = int(side_mm / 2 / sy), int(side_mm / 2 / sx)
    hu = scan.volume.hu[z0 + z]
    ya, yb = max(0, int(cy) - hy), min(hu.shape[0], int(cy) + hy)
    xa, xb = max(0, int(cx) - hx), min(hu.shape[1], int(cx) + hx)
    ax.imshow(hu[ya:yb, xa:xb], cmap="gray", vmin=-1350, vmax=150)
    mask = np.zeros(hu.shape, bool)
    m = candidate.detector_mask[z]
    mask[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m
    ax.contour(mask[ya:yb, xa:xb], levels=[0.5], colors="orange", linewidths=0.8)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def write_outputs(out: Path, summaries: dict, main_row: str, fps: list[dict], meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    # FROC plot
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row, summary in summaries.items():
        curve = summary["all"]["curve"]
        xs = [max(x, 1 / 16) for x, _ in curve]
        ax.step(xs, [y for _, y in curve], where="post", label=f"{row} (CPM {summary['all']['cpm']:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"FROC on held-out scans ({meta['split']} nodules pasted)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "froc.png", dpi=130)
    plt.close(fig)
    # false positives: thumbnails, a contact sheet, a CSV
    (out / "fp").mkdir(exist_ok=True)
    for number, row in enumerate(fps, start=1):
        row["thumbnail"] = f"fp/{number:03d}_{row['scan']}.png"
        fig, ax = plt.subplots(figsize=(2, 2))
        thumbnail(ax, row["_scan"], row["_candidate"], f"{row['scan']} score {row['score']:.2f}")
        fig.savefig(out / row["thumbnail"], dpi=100)
        plt.close(fig)
    shown = fps[:30]
    if shown:
        columns = 6
        fig, axes = plt.subplots(int(np.ceil(len(shown) / columns)), columns, figsize=(12, 2.1 * np.ceil(len(shown) / columns)),
                                 squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, row in zip(axes.ravel(), shown):
            thumbnail(ax, row["_scan"], row["_candidate"], f"{row['scan'][:14]} {row['score']:.2f}")
        fig.tight_layout()
        fig.savefig(out / "false_positives.png", dpi=100)
        plt.close(fig)
    fields = ["scan", "name", "source", "score", "detector_score", "volume_mm3", "slices", "center_ijk_zyx",
              "center_lps_mm", "box_ijk", "thumbnail"]
    with open(out / "false_positives.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(fps)
    clean_fps = [{k: v for k, v in r.items() if not k.startswith("_")} for r in fps]
    (out / "summary.json").write_text(json.dumps({**meta, "main_row": main_row, "rows": summaries,
                                                  "false_positives": clean_fps}, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summaries, main_row, meta))


def markdown(summaries: dict, main_row: str, meta: dict) -> str:
    rates = ["1/8", "1/4", "1/2", "1", "2", "4", "8"]
    lines = [f"# Detection on held-out scans ({meta['split']} split nodules pasted)", "",
             f"Scans: {', '.join(meta['scans'])} (none trained any model). Detector `{meta['detector']}` "
             f"({meta.get('detector_backend', 'torch')}), classifier `{meta['fpr']}`. {meta['lesions_real']} real and {meta['lesions_pasted']} pasted "
             "lesions; false positives counted on the real scans.", "",
             "| row | CPM | " + " | ".join(f"sens @ {r}" for r in rates) + " | real found / all | FP total |",
             "|---|---|" + "---|" * len(rates) + "---|---|"]
    for row, s in summaries.items():
        sens = " | ".join(f"{v:.3f}" for v in s["all"]["sensitivity"])
        lines.append(f"| {row} | {s['all']['cpm']:.3f} | {sens} | {s['real']['found_at_any_score']}/"
                     f"{s['real']['lesions']} | {s['false_positives_total']} |")
    main = summaries[main_row]
    lines += ["", f"Main row: **{main_row}**. Real lesions: CPM {main['real']['cpm']:.3f}, "
              f"sensitivity at 1 FP/scan {main['real']['sensitivity'][3]:.3f}; pasted: CPM "
              f"{main['pasted']['cpm']:.3f}, at 1 FP/scan {main['pasted']['sensitivity'][3]:.3f}.", "",
              "| stratum | lesions | sensitivity (any score) | sensitivity at 1 FP/scan |", "|---|---|---|---|"]
    for key, v in main["strata"].items():
        if v["lesions"]:
            lines.append(f"| {key} | {v['lesions']} | {v['sensitivity_any']:.3f} | {v['sensitivity_at_1fp']:.3f} |")
    if meta.get("operating_points"):
        lines += ["", "| operating point | threshold | sensitivity | FP per scan |", "|---|---|---|---|"]
        for name, op in meta["operating_points"].items():
            lines.append(f"| {name} | {op['threshold']:.4f} | {op['sensitivity']:.3f} | {op['fp_per_scan']:.2f} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--split", choices=("val", "test"), default="test",
                        help="which VOI split's nodules are pasted into the held-out scans")
    parser.add_argument("--out", type=Path, default=None, help="default: out/detection/<split>")
    parser.add_argument("--detector", default="nodule-detector", help="registry name or nnU-Net 2D folder")
    parser.add_argument("--fpr", default="nodule-fpr", help="candidate classifier (name or folder; 'none')")
    parser.add_argument("--scans", nargs="*", default=list(scans_mod.HELD_OUT_SCANS),
                        help="held-out scans (default: %(default)s)")
    parser.add_argument("--per-copy", type=int, default=24, help="pasted nodules per copy of a scan")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most this many pasted nodules per scan (default: the whole split)")
    parser.add_argument("--lidc-dir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=Path("out/detcache"),
                        help="detector outputs are cached here ('' for none)")
    parser.add_argument("--seed", type=int, default=20241202)
    parser.add_argument("--calibrate", action="store_true",
                        help="write the operating points into the classifier's model.json (use with --split val)")
    return parser


def main(args) -> int:
    from NoduleSAMLib.detect import Detector
    from NoduleSAMLib.errors import NoduleSAMError
    from NoduleSAMLib.models import detector_folder, fpr_folder

    lidc_dir = Path(args.lidc_dir or default_lidc_dir())
    out = args.out or Path("out/detection") / args.split
    trained_on = set(args.scans) & set(scans_mod.TRAIN_SCANS)
    if trained_on:
        raise NoduleSAMError(f"{', '.join(sorted(trained_on))}: training scans; evaluate on held-out scans only")
    if args.calibrate and args.split != "val":
        raise NoduleSAMError("--calibrate reads operating points off the val FROC: use --split val")
    folder = detector_folder(args.detector)
    detector = Detector(folder)
    detector.predictor.allow_tqdm = False
    fpr = None
    if args.fpr != "none":
        from NoduleSAMLib.fpr import FalsePositiveReducer

        fpr = FalsePositiveReducer(fpr_folder(args.fpr))
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    scans = evaluation_scans(args.split, args.scans, lidc_dir, args.per_copy, args.seed, log, args.limit)
    results = evaluate(scans, detector, folder, fpr, Path(args.cache_dir) if args.cache_dir else None, log)
    summaries = {row: summarise(records) for row, records in results.items()}
    main_row = "classifier, filters + blob candidates" if fpr is not None else "detector + lung gate + flat filter"
    meta = {"split": args.split, "scans": args.scans, "detector": args.detector,
            "detector_backend": detector.backend, "fpr": args.fpr,
            "seed": args.seed, "per_copy": args.per_copy, "limit": args.limit,
            "lesions_real": summaries[main_row]["real"]["lesions"],
            "lesions_pasted": summaries[main_row]["pasted"]["lesions"]}
    if fpr is not None:
        main = summaries[main_row]["all"]
        records = results[main_row]
        found = [s for r in records for s in r["outcome"].lesion_scores.values()]
        fp_scores = [s for r in records if r["counts_fp"] for s in r["outcome"].fp_scores]
        points = {}
        for name, rate in OPERATING_RATES.items():
            # calibrating: the FROC's own threshold at that rate (-inf, keep all, is 0 for a probability)
            threshold = (max(0.0, main["thresholds"][froc_mod.FP_RATES.index(rate)]) if args.calibrate
                         else fpr.operating_points[name])
            points[name] = froc_mod.operating_point(found, fp_scores, main["lesions"],
                                                    summaries[main_row]["scans"], threshold)
        meta["operating_points"] = points
        meta["cpm"] = main["cpm"]
        if args.calibrate:
            card_path = fpr.folder / "model.json"
            card = json.loads(card_path.read_text())
            card["operating_points"] = {name: {**op, "fp_rate_target": OPERATING_RATES[name], "calibrated": True,
                                               "read_off": f"val FROC on {', '.join(args.scans)}"}
                                        for name, op in points.items()}
            card_path.write_text(json.dumps(card, indent=2) + "\n")
            log(f"operating points written to {card_path}")
    fps = false_positive_rows(results[main_row])
    write_outputs(out, summaries, main_row, fps, meta)
    print((out / "summary.md").read_text())
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("evaluate-detection",
                                   help="per-nodule FROC of the detector (+ classifier) on held-out whole CTs")
    add_arguments(parser)
    parser.set_defaults(func=main)
