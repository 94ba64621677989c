"""A user's box or click -> 3D nodule: 3D Dice of the engine's refinement on LIDC VOIs and scans.

    python benchmarks/user_box.py [--split test] [--step 7] [--offset 0] [--limit 20] [--scans]
                                  [--out benchmarks/results/user_box_test.json]

Each case is refined from prompts a person would give, through the same code as ``--boxes``,
``--points`` and Slicer's ROIs and fiducials (``BoxRefiner.refine``,
``prompts.box_from_click``), with the product's default refiner (``--refiner``: another registry
name) and the engine's defaults:

- the tight 3D box of the 50 % consensus; the box + 10 % and + 25 % per side (in every axis);
  the tight box shifted in-plane by 15 % of its size;
- one click at the consensus centroid, and one 2 mm away from it (in-plane).

Beside every case runs the oracle: SAM on each slice with that slice's own consensus box + 2 px
(the best SAM can do with box prompts here). Dice is 3D against the consensus.

Data: the VOIs of one split of ``../shared/data/lidc/voi`` (every ``--step``-th case id from the
``--offset``-th, at most ``--limit``; offset 0 is the set the settings were chosen on); with ``--scans``, also the nodules (>= 3 readers) of the three full LIDC scans and
the GTV-1 tumours of the NSCLC-Radiomics scans. No model here trained on any of these: the
refiners did not train on them, but the box method's settings were chosen on the `test` VOIs listed
in BENCHMARKS.md (so those numbers are not held out: see its notes); the click box was chosen on
the `val` VOIs (``--split val --step 4``).

Timing: a new box on a fresh cache (no embedding, no decoded box), and an edit (the same box moved
by 1 px in-plane, ``edit_same_crop`` when that keeps the snapped crop), per case.
Writes JSON and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "NoduleSAM"))
sys.path.insert(0, str(REPO / "training"))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * (a & b).sum() / total)


def tight_box(mask: np.ndarray) -> tuple[int, ...]:
    zs, ys, xs = np.nonzero(mask)
    return (int(zs.min()), int(zs.max()) + 1, int(ys.min()), int(ys.max()) + 1,
            int(xs.min()), int(xs.max()) + 1)


def grown(box, fraction: float) -> tuple[int, ...]:
    out = []
    for lo, hi in zip(box[0::2], box[1::2]):
        d = fraction * (hi - lo)
        out += [int(np.floor(lo - d)), int(np.ceil(hi + d))]
    return tuple(out)


def shifted(box, fraction: float) -> tuple[int, ...]:
    z0, z1, y0, y1, x0, x1 = box
    dy, dx = int(round(fraction * (y1 - y0))), int(round(fraction * (x1 - x0)))
    return (z0, z1, y0 + dy, y1 + dy, x0 + dx, x1 + dx)


def voi_cases(voi_dir: Path, split: str, step: int, limit: int, offset: int = 0):
    import SimpleITK as sitk

    with open(voi_dir / "cases.csv", newline="") as f:
        rows = sorted((r for r in csv.DictReader(f) if r["split"] == split), key=lambda r: r["case_id"])
    for row in rows[offset::step][:limit]:
        folder = voi_dir / row["case_id"]
        image = sitk.ReadImage(str(folder / "image.nii.gz"))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "consensus50.nii.gz"))) > 0
        yield (row["case_id"], sitk.GetArrayFromImage(image).astype(np.float32), mask,
               np.array(image.GetSpacing()[::-1], float))


def scan_cases(lidc_dir: Path):
    """The reference lesions of the whole scans (LIDC nodules with >= 3 readers, NSCLC tumours in
    the lungs), each on a crop of its scan (its box + 40 voxels in-plane and 6 slices)."""
    from nodulesam_train.scans import available, load_scan

    for name in ("LIDC-IDRI-0001", "LIDC-IDRI-0003", "LIDC-IDRI-0314",
                 "NSCLC-Radiomics-LUNG1-002", "NSCLC-Radiomics-LUNG1-003"):
        if not available(name, lidc_dir):
            continue
        scan = load_scan(name, lidc_dir)
        hu, spacing = scan.volume.hu, scan.volume.spacing_zyx_mm
        for lesion in scan.lesions:
            mask = scan.labels == lesion.value
            z0, z1, y0, y1, x0, x1 = tight_box(mask)
            lo = np.maximum([z0 - 6, y0 - 40, x0 - 40], 0)
            hi = np.minimum([z1 + 6, y1 + 40, x1 + 40], hu.shape)
            region = tuple(slice(a, b) for a, b in zip(lo, hi))
            yield f"{name} lesion {lesion.value}", hu[region], mask[region], spacing
        del scan


def run_case(refiner, hu, truth, spacing, key) -> tuple[dict, dict]:
    from NoduleSAMLib.boxes import Candidate
    from NoduleSAMLib.geometry import box2d_of_mask, clip_box3d, expand_box2d
    from NoduleSAMLib.prompts import box_from_click

    def refined(box):
        box = clip_box3d(box, hu.shape)
        out = np.zeros(hu.shape, bool)
        z0, z1, y0, y1, x0, x1 = box
        out[z0:z1, y0:y1, x0:x1] = refiner.refine(hu, Candidate("n", box, source="given box"), key,
                                                  spacing_zyx_mm=spacing)
        return out

    tight = tight_box(truth)
    centroid = np.round(np.argwhere(truth).mean(axis=0)).astype(int)
    off = centroid + np.round([0, 0, 2.0 / spacing[2]]).astype(int)  # 2 mm along x
    prompts = {"tight box": tight, "box + 10 %": grown(tight, 0.10), "box + 25 %": grown(tight, 0.25),
               "box shifted 15 %": shifted(tight, 0.15),
               "click at centroid": box_from_click(hu, spacing, centroid),
               "click 2 mm off": box_from_click(hu, spacing, off)}
    scores = {}
    for name, box in prompts.items():
        refiner.clear_cache()
        start = time.perf_counter()
        scores[name] = dice(refined(box), truth)
        if name == "tight box":
            new_s = time.perf_counter() - start
            moved = box[:4] + (box[4] + 1, box[5] + 1)  # moved 1 px along x
            same_crop = refiner.crop_for([box[4], box[2], box[5] - 1, box[3] - 1]) == \
                refiner.crop_for([moved[4], moved[2], moved[5] - 1, moved[3] - 1])
            start = time.perf_counter()
            refined(moved)
            edit_s = time.perf_counter() - start
    crop = refiner.crop_for([tight[4], tight[2], tight[5] - 1, tight[3] - 1])
    oracle = np.zeros_like(truth)
    for z in np.flatnonzero(truth.any(axis=(1, 2))):
        box = expand_box2d(box2d_of_mask(truth[z]), 0.0, 2.0)
        oracle[z] = refiner.logits(hu[z], box, (key, z), crop) > 0
    scores["oracle"] = dice(oracle, truth)
    return scores, {"new_box_s": new_s, "edit_s": edit_s, "edit_same_crop": bool(same_crop),
                    "slices": int(tight[1] - tight[0])}


def main() -> None:
    import torch
    from nodulesam_train.detector_data import default_lidc_dir
    from NoduleSAMLib.models import build_sam
    from NoduleSAMLib.refine import BoxRefiner
    from NoduleSAMLib.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lidc-dir", type=Path, default=Path(default_lidc_dir()))
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--step", type=int, default=7)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--offset", type=int, default=0,
                        help="first case (default 0: the cases the settings were chosen on; "
                             "1..step-1 give disjoint, held-out sets)")
    parser.add_argument("--scans", action="store_true", help="also the full scans' nodules and tumours")
    parser.add_argument("--encoder", default="auto", help="image encoder backend (default: %(default)s)")
    parser.add_argument("--refiner", default=Settings().refiner,
                        help="refiner registry name (default: the product's, %(default)s)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or REPO / "benchmarks" / "results" / f"user_box_{args.split}.json"
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

    refiner = BoxRefiner(build_sam(args.refiner), encoder=args.encoder)
    print(f"refiner: {args.refiner}, encoder: {refiner.encoder_name}", flush=True)
    groups = {f"VOIs {args.split}": voi_cases(args.lidc_dir / "voi", args.split, args.step, args.limit,
                                                    args.offset)}
    if args.scans:
        groups["full scans"] = scan_cases(args.lidc_dir)
    results = {}
    load_start = os.getloadavg()
    print(f"load average at the start: {load_start}", flush=True)
    for group, cases in groups.items():
        for name, hu, truth, spacing in cases:
            scores, times = run_case(refiner, hu, truth, spacing, name)
            results[name] = {"group": group, **scores, **times}
            print(name, " ".join(f"{k} {v:.3f}" for k, v in scores.items()),
                  f"new {times['new_box_s']:.1f} s, edit {times['edit_s']:.2f} s", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"split": args.split, "step": args.step, "offset": args.offset,
                               "limit": args.limit,
                               "encoder": refiner.encoder_name, "refiner": args.refiner,
                               "load_average_start": load_start, "load_average_end": os.getloadavg(),
                               "cases": results}, indent=1))
    columns = [k for k in next(iter(results.values())) if k not in ("group", "new_box_s", "edit_s", "edit_same_crop", "slices")]
    print("\n| data | cases | " + " | ".join(columns) + " | new box s (per slice) | edit s |")
    print("|---" * (len(columns) + 4) + "|")
    for group in groups:
        rows = [r for r in results.values() if r["group"] == group]
        if not rows:
            continue
        per_slice = np.mean([r["new_box_s"] / max(r["slices"], 1) for r in rows])
        print(f"| {group} | {len(rows)} | " + " | ".join(f"{np.mean([r[c] for r in rows]):.3f}" for c in columns)
              + f" | {np.mean([r['new_box_s'] for r in rows]):.1f} ({per_slice:.2f}) | "
              f"{np.mean([r['edit_s'] for r in rows]):.2f} |")
        for same in (True, False):
            edits = [r["edit_s"] for r in rows if r["edit_same_crop"] == same]
            if edits:
                print(f"{group}: {len(edits)} edits {'within' if same else 'crossing'} the crop grid: "
                      f"mean {np.mean(edits):.2f} s, median {np.median(edits):.2f} s, max {np.max(edits):.2f} s")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
