"""Nodule type (solid / part-solid / ground-glass) against the LIDC readers.

    python benchmarks/nodule_type.py [--lidc DIR] [--out benchmarks/results/nodule_type.json]

Data: every VOI of ``../shared/data/lidc/voi`` with its 50 % consensus mask (the reference
segmentation, not the engine's). Reference type: the readers' texture median (LIDC 1-5) mapped
to three classes, 1-2 ground-glass, 4-5 solid and everything between (2.5, 3, 3.5) part-solid,
as ``nodulesam_train.detection_eval.texture_class`` maps it.

Tuning: ``TypeSettings.solid_hu`` (-450 to -100 HU in steps of 50) and the two solid-fraction
cut-offs (0 to 0.98 in steps of 0.02) are chosen on train + val by the highest balanced
accuracy + Cohen's kappa; the test split is reported with those and was not looked at for the
choice. The script checks that the choice equals ``TypeSettings()``'s defaults and that the
fast grid path gives the same types as ``nodule_type.classify_nodule`` on the test VOIs.

Readers' own agreement beside it, on the same three classes: each reader against the median
of the other readers of that nodule (pooled pairs, Cohen's kappa; the analogue of the method
against the readers' median) and Fleiss' kappa per number of readers (LIDC readers are
anonymous, so a reader's position is not the same radiologist across nodules and pairwise
per-reader kappas are not defined).

Writes JSON and prints the Markdown table.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "NoduleSAM"))
sys.path.insert(0, str(REPO / "training"))

from NoduleSAMLib.nodule_type import TypeSettings, classify_nodule, inner_voxels  # noqa: E402
from NoduleSAMLib.volume import CTVolume  # noqa: E402
from nodulesam_train.detection_eval import texture_class  # noqa: E402
from nodulesam_train.detector_data import default_lidc_dir  # noqa: E402
from nodulesam_train.kappa import fleiss_kappa  # noqa: E402

SOLID_HU_GRID = tuple(range(-450, -99, 50))
FRACTION_GRID = tuple(np.round(np.arange(0.0, 1.0, 0.02), 2))
LABELS = ("ground-glass", "part-solid", "solid")  # the tables' order
CLASS_NAMES = {"ground glass": "ground-glass", "part solid": "part-solid", "solid": "solid"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def reference_type(texture: float) -> str:
    return CLASS_NAMES[texture_class(texture)]


def read_voi(folder: Path) -> tuple[CTVolume, np.ndarray]:
    """A VOI's HU crop as a CTVolume (``[z, y, x]``, its own geometry) and its consensus mask."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(folder / "image.nii.gz"))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "consensus50.nii.gz"))) > 0
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    volume = CTVolume.from_lps(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(),
                               direction, str(folder))
    return volume, mask


def agreement(reference: list[str], predicted: list[str]) -> dict:
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, confusion_matrix

    # an empty mask has no type ("none"): a column of its own, never dropped
    labels = list(LABELS) + sorted(set(predicted) - set(LABELS))
    matrix = confusion_matrix(reference, predicted, labels=labels)
    recall = {t: (float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else None)
              for i, t in enumerate(LABELS)}
    return {"n": len(reference), "counts": {t: int(matrix[i].sum()) for i, t in enumerate(LABELS)},
            "confusion_rows_reference_cols_predicted": matrix.tolist(), "labels": labels,
            "recall": recall, "balanced_accuracy": float(balanced_accuracy_score(reference, predicted)),
            "accuracy": float(np.mean(np.asarray(reference) == np.asarray(predicted))),
            "cohen_kappa": float(cohen_kappa_score(reference, predicted, labels=labels))}


def kappa_interval(reference, predicted, reps=2000, seed=0) -> list[float]:
    """95 % bootstrap interval of Cohen's kappa over cases."""
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(seed)
    reference, predicted = np.asarray(reference), np.asarray(predicted)
    values = []
    for _ in range(reps):
        pick = rng.integers(0, len(reference), len(reference))
        if len(set(reference[pick]) | set(predicted[pick])) > 1:
            values.append(cohen_kappa_score(reference[pick], predicted[pick]))
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def reader_agreement(rows: list[dict]) -> dict:
    from sklearn.metrics import cohen_kappa_score

    one, rest = [], []
    groups: dict[int, list[list[str]]] = {}
    for row in rows:
        ratings = [float(r) for r in row["texture_ratings"].split(";")]
        classes = [reference_type(r) for r in ratings]
        groups.setdefault(len(classes), []).append(classes)
        for i, rating in enumerate(ratings):
            others = ratings[:i] + ratings[i + 1:]
            one.append(classes[i])
            rest.append(reference_type(float(np.median(others))))
    codes = {t: i for i, t in enumerate(LABELS)}
    fleiss = {str(n): {"n_nodules": len(g),
                       "fleiss_kappa": fleiss_kappa([[codes[c] for c in classes] for classes in g],
                                                    tuple(codes.values()))}
              for n, g in sorted(groups.items()) if len(g) >= 5}
    return {"reader_vs_median_of_others": {"n_pairs": len(one),
                                           "cohen_kappa": float(cohen_kappa_score(rest, one, labels=list(LABELS))),
                                           **{k: v for k, v in agreement(rest, one).items()
                                              if k in ("recall", "balanced_accuracy")}},
            "fleiss_kappa_by_readers": fleiss}


def refined_types(cases, volumes, rows, settings: TypeSettings, encoder: str):
    """The types of the engine's masks: each VOI refined by LiteMedSAM from the consensus's tight
    3D box (what a user's box gives), with the engine's defaults; and their 3D Dice."""
    import torch
    from NoduleSAMLib.boxes import Candidate
    from NoduleSAMLib.models import build_sam
    from NoduleSAMLib.refine import BoxRefiner

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    refiner = BoxRefiner(build_sam("litemedsam"), encoder=encoder)
    types, dice = [], []
    for i in cases:
        volume, truth = volumes[i]
        zs, ys, xs = np.nonzero(truth)
        box = (int(zs.min()), int(zs.max()) + 1, int(ys.min()), int(ys.max()) + 1,
               int(xs.min()), int(xs.max()) + 1)
        mask = np.zeros(truth.shape, bool)
        mask[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = refiner.refine(
            volume.hu, Candidate("n", box, source="given box"), rows[i]["case_id"])
        types.append(classify_nodule(volume, mask, settings)["type"] or "none")
        dice.append(2 * (mask & truth).sum() / max(mask.sum() + truth.sum(), 1))
        print(rows[i]["case_id"], types[-1], f"dice {dice[-1]:.2f}", flush=True, file=sys.stderr)
    return types, dice


def tune(fractions: dict[float, np.ndarray], reference: np.ndarray, pick: np.ndarray) -> dict:
    """The grid point with the highest balanced accuracy + kappa on the ``pick`` cases."""
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score

    best = None
    for solid_hu, fraction in fractions.items():
        for low, high in itertools.combinations(FRACTION_GRID, 2):
            predicted = np.where(fraction < low, "ground-glass",
                                 np.where(fraction >= high, "solid", "part-solid"))[pick]
            score = (balanced_accuracy_score(reference[pick], predicted)
                     + cohen_kappa_score(reference[pick], predicted))
            if best is None or score > best[0] + 1e-12:
                best = (score, solid_hu, float(low), float(high))
    return {"objective": "balanced accuracy + Cohen's kappa", "score": best[0],
            "solid_hu": best[1], "ground_glass_below": best[2], "solid_from": best[3]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lidc", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "nodule_type.json")
    parser.add_argument("--refined", action="store_true",
                        help="also classify the engine's refined masks of the test VOIs (LiteMedSAM "
                             "from the consensus's tight 3D box; minutes on a CPU)")
    parser.add_argument("--encoder", default="auto", help="refiner encoder backend (with --refined)")
    parser.add_argument("--solid-step", type=int, default=1,
                        help="with --refined: every ground-glass and part-solid test case but only "
                             "every N-th solid one (default 1: all)")
    args = parser.parse_args(argv)
    lidc = args.lidc or default_lidc_dir()
    start = time.perf_counter()
    with open(lidc / "voi" / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    defaults = TypeSettings()
    inner_hu, volumes = [], []
    for row in rows:
        volume, mask = read_voi(lidc / "voi" / row["case_id"])
        inner_hu.append(volume.hu[inner_voxels(mask, defaults.min_inner_fraction)])
        volumes.append((volume, mask))
    reference = np.array([reference_type(float(r["texture_median"])) for r in rows])
    split = np.array([r["split"] for r in rows])
    fractions = {t: np.array([(hu >= t).mean() for hu in inner_hu]) for t in SOLID_HU_GRID}
    tuned = tune(fractions, reference, split != "test")
    settings = TypeSettings(tuned["solid_hu"], tuned["ground_glass_below"], tuned["solid_from"],
                            defaults.min_inner_fraction)
    if settings != defaults:
        print(f"note: the tuned settings {settings} differ from TypeSettings() {defaults}",
              file=sys.stderr)
    # the engine's own code on every case, with the tuned settings
    predicted = np.array([classify_nodule(v, m, settings)["type"] for v, m in volumes])
    fraction = fractions[settings.solid_hu]
    fast = np.where(fraction < settings.ground_glass_below, "ground-glass",
                    np.where(fraction >= settings.solid_from, "solid", "part-solid"))
    assert (fast == predicted).all(), "grid path and classify_nodule disagree"

    results = {}
    for name, pick in (("test", split == "test"), ("train+val (tuned on)", split != "test")):
        results[name] = agreement(list(reference[pick]), list(predicted[pick]))
        results[name]["cohen_kappa_95ci"] = kappa_interval(reference[pick], predicted[pick])
        results[name]["readers"] = reader_agreement([r for r, p in zip(rows, pick) if p])
    if args.refined:
        test = np.flatnonzero(split == "test")
        solid = test[reference[test] == "solid"]
        test = np.sort(np.concatenate([test[reference[test] != "solid"], solid[::args.solid_step]]))
        refined, dice = refined_types(test, volumes, rows, settings, args.encoder)
        name = (f"test, engine's refined masks (tight box; every {args.solid_step}th solid case)"
                if args.solid_step > 1 else "test, engine's refined masks (tight box)")
        results[name] = agreement(list(reference[test]), refined)
        results[name]["cohen_kappa_95ci"] = kappa_interval(reference[test], refined)
        results[name]["readers"] = results["test"]["readers"]
        results[name]["mean_dice_vs_consensus"] = float(np.mean(dice))
        results[name]["consensus_masks_same_cases"] = agreement(list(reference[test]),
                                                                list(predicted[test]))
        results[name]["cases"] = {rows[i]["case_id"]: {"reference": reference[i], "consensus": predicted[i],
                                                       "refined": t, "dice": float(d)}
                                  for i, t, d in zip(test, refined, dice)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    report = {
        "benchmark": "nodule type vs LIDC readers' texture", "date": datetime.date.today().isoformat(),
        "commit": commit, "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "masks": "LIDC 50% consensus (consensus50.nii.gz)",
        "reference": "texture median: 1-2 ground-glass, >2 to <4 part-solid, 4-5 solid",
        "tuned_on": "train + val", "tuning": tuned, "settings": settings.to_dict(),
        "settings_equal_defaults": settings == defaults, "results": results,
        "wall_s": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = ["| split | n (GG / PS / solid) | recall GG | recall PS | recall solid | balanced acc. "
             "| Cohen's kappa (95 % CI) | readers: one vs the others' median, kappa | Fleiss' kappa (3 / 4 readers) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        c, rec = r["counts"], r["recall"]
        fleiss = r["readers"]["fleiss_kappa_by_readers"]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"
        lines.append(
            f"| {name} | {r['n']} ({c['ground-glass']} / {c['part-solid']} / {c['solid']}) "
            f"| {fmt(rec['ground-glass'])} | {fmt(rec['part-solid'])} | {fmt(rec['solid'])} "
            f"| {r['balanced_accuracy']:.2f} | {r['cohen_kappa']:.2f} "
            f"({r['cohen_kappa_95ci'][0]:.2f}-{r['cohen_kappa_95ci'][1]:.2f}) "
            f"| {r['readers']['reader_vs_median_of_others']['cohen_kappa']:.2f} "
            f"| {fmt(fleiss.get('3', {}).get('fleiss_kappa'))} / {fmt(fleiss.get('4', {}).get('fleiss_kappa'))} |")
    for name, r in report["results"].items():
        lines.append(f"\nConfusion, {name} (rows: readers' median GG / PS / solid; columns: ours "
                     f"{' / '.join(r['labels'])}): {r['confusion_rows_reference_cols_predicted']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
