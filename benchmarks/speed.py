"""Speed benchmark: detector per slice, refiner encoder per crop (fp32, bf16), decoder per box,
the whole ``segment`` on LIDC-IDRI-0001, and peak memory.

    python benchmarks/speed.py [--lidc-dir DIR] [--detector NAME_OR_DIR] [--out FILE.json]

Writes the numbers as JSON and appends a dated row to BENCHMARKS.md. Needs the shared LIDC data.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
from nodulesam_train.detector_data import default_lidc_dir  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(function, repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def add_speed_row(path: Path, row: str) -> None:
    """Insert ``row`` after the last row of the speed table (the first table of the Speed section)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## Speed"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rows = [i for i in range(start, end) if lines[i].startswith("| 20")]
    at = rows[-1] + 1 if rows else end
    lines.insert(at, row)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lidc-dir", default=default_lidc_dir(),
                        help="the shared LIDC data (default: $NODULESAM_LIDC_DIR or ../shared/data/lidc)")
    parser.add_argument("--detector", default="nodule-detector")
    parser.add_argument("--fpr", default="nodule-fpr", help="candidate classifier ('none' for none)")
    parser.add_argument("--sensitivity", default="high", help="the classifier's operating point")
    parser.add_argument("--out", default=REPO / "benchmarks" / "results" / "speed.json")
    parser.add_argument("--crops", type=int, default=8, help="crops timed per encoder precision")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="encoder precisions to time (bf16 is very slow on CPUs without "
                             "bf16 instructions)")
    args = parser.parse_args()

    from NoduleSAMLib.prompts import candidates_from_boxes
    from NoduleSAMLib.detect import Detector
    from NoduleSAMLib.geometry import box2d_of_mask, expand_box2d
    from NoduleSAMLib.fpr import FalsePositiveReducer
    from NoduleSAMLib.models import build_sam, detector_folder, fpr_folder
    from NoduleSAMLib.pipeline import Pipeline
    from NoduleSAMLib.refine import BoxRefiner
    from NoduleSAMLib.volume import read_ct
    import SimpleITK as sitk

    scans = Path(args.lidc_dir) / "scans"
    series = next(p.parent for p in (scans / "LIDC-IDRI-0001").rglob("*.dcm"))
    results = {"date": datetime.date.today().isoformat(), "machine": machine()}
    start = time.perf_counter()
    volume = read_ct(series)
    results["read_dicom_s"] = time.perf_counter() - start
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(scans / "LIDC-IDRI-0001.consensus50.nii.gz"))) > 0
    sam = build_sam("litemedsam")

    # Encoder per crop: one crop per nodule slice, new embedding each time.
    slices = [int(z) for z in np.nonzero(truth.any(axis=(1, 2)))[0]][: args.crops]
    boxes = {z: expand_box2d(box2d_of_mask(truth[z]), 0.0, 2.0) for z in slices}
    for precision in args.precisions.split(","):
        refiner = BoxRefiner(sam, bf16=precision == "bf16")
        seconds = [timed(lambda: refiner.segment(volume.hu[z], boxes[z], ("bench", z)), 1)[0]
                   for z in slices]
        results[f"encoder_{precision}_s_per_crop"] = float(np.median(seconds))
    # Decoder per box with a cached embedding (a box edit inside the crop).
    z = slices[len(slices) // 2]
    seconds = timed(lambda: refiner.segment(volume.hu[z], boxes[z] + 1, ("bench", z)), 20)
    results["decoder_s_per_box"] = float(np.median(seconds))

    try:
        folder = detector_folder(args.detector)
    except Exception as err:  # the bundled detector may not be installed yet
        results["detector"] = f"unavailable: {err}"
        folder = None
    if folder is not None:
        detector = Detector(folder)
        fpr = None if args.fpr == "none" else FalsePositiveReducer(fpr_folder(args.fpr))
        pipeline = Pipeline(detector, BoxRefiner(sam), fpr=fpr,
                            fpr_threshold=fpr.threshold(args.sensitivity) if fpr else 0.0)
        result = pipeline.run(volume)
        results["detector"] = str(args.detector)
        results["fpr"] = str(args.fpr)
        results["sensitivity"] = args.sensitivity if fpr else None
        results["detector_s_per_slice"] = result.timings_s["detect_s"] / volume.hu.shape[0]
        results["segment_timings_s"] = result.timings_s
        results["segment_total_s"] = result.timings_s["total_s"] + results["read_dicom_s"]
        results["nodules_found"] = len(result.nodules)
        labels = result.labelmap() > 0
        results["nodule1_found"] = bool((labels & truth).any())
        results["dice_vs_consensus"] = float(2 * (labels & truth).sum() / (labels.sum() + truth.sum()))
    # Given-box segment (no detector) of the reference nodule, for comparison.
    z0, y0, x0 = np.argwhere(truth).min(axis=0)
    z1, y1, x1 = np.argwhere(truth).max(axis=0) + 1
    candidates, _ = candidates_from_boxes([{"ijk": [int(z0) - 1, int(z1) + 1, int(y0) - 3,
                                                     int(y1) + 3, int(x0) - 3, int(x1) + 3]}],
                                          volume.hu.shape)
    start = time.perf_counter()
    nodules = Pipeline(None, BoxRefiner(sam)).segment(volume, candidates)
    results["given_box_refine_s"] = time.perf_counter() - start
    full = np.zeros_like(truth)
    zb0, zb1, yb0, yb1, xb0, xb1 = candidates[0].box_ijk
    full[zb0:zb1, yb0:yb1, xb0:xb1] = nodules[0].mask
    results["given_box_dice_vs_consensus"] = float(2 * (full & truth).sum() / (full.sum() + truth.sum()))
    results["peak_rss_mb"] = peak_rss_mb()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    bf16 = results.get("encoder_bf16_s_per_crop")
    command = " ".join(["python benchmarks/speed.py", *sys.argv[1:]])
    row = (f"| {results['date']} | {commit} | `{command}` | {results['machine']} | "
           f"{results.get('detector_s_per_slice', float('nan')):.3f} | "
           f"{results['encoder_fp32_s_per_crop']:.2f} / {'not run' if bf16 is None else f'{bf16:.2f}'} | "
           f"{results['decoder_s_per_box']:.3f} | {results.get('segment_total_s', float('nan')):.1f} | "
           f"{results['peak_rss_mb']:.0f} |")
    add_speed_row(REPO / "BENCHMARKS.md", row)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
