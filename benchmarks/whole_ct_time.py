"""Whole-CT time: the default engine (``nodulesam segment``'s) on every complete chest CT we have.

    python benchmarks/whole_ct_time.py [--scans NAME ...] [--compare-detector]
                                       [--out benchmarks/results/whole_ct_time.json]

Builds the pipeline once from the default ``Settings`` (the bundled detector, classifier and
refiner, the default operating point and backends), as ``nodulesam segment`` does, then runs it
on each CT of ``nodulesam_train.scans`` (LIDC-IDRI-0001, -0003, -0314, NSCLC-Radiomics LUNG1-002,
-003 and the demo CT), after reading it. Reports per CT: slices and field of view, the stage
times (``detect_s``, ``candidates_s``, ``refine_s``, ``measure_s``, ``total_s``), how many
nodules were kept and which reference lesions they touch, and the load average before and after,
since a busy machine makes every number slower (``cpu_s``, the process's CPU time over all
threads, moves less with other jobs than the wall-clock times do). The issue's goal is the
whole CT in <= 60 s on 2 CPU cores. With ``--compare-detector``, also times the detector alone per CT as it ran before
2026-12-03 (torch, every voxel, nnU-Net's own resampling) beside the default (the lung region,
OpenCV resampling, the default backend). Writes JSON and prints Markdown tables. Needs
the shared data.

LIDC-IDRI-0001, -0003 and LUNG1-002 trained the detector or the classifier: their nodule counts
are in-distribution (``nodulesam-train evaluate-detection`` gives the held-out accuracy); the
times are what matter here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "NoduleSAM"))
sys.path.insert(0, str(REPO / "training"))


def main() -> None:
    from nodulesam_train import scans as scans_mod

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", nargs="*", default=list(scans_mod.TRAIN_SCANS + scans_mod.HELD_OUT_SCANS))
    parser.add_argument("--compare-detector", action="store_true",
                        help="also time the detector alone as it ran before 2026-12-03")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "whole_ct_time.json")
    args = parser.parse_args()

    from NoduleSAMLib.cli import build_pipeline
    from NoduleSAMLib.detect import Detector
    from NoduleSAMLib.models import detector_folder
    from NoduleSAMLib.settings import Settings

    start = time.perf_counter()
    pipeline = build_pipeline(Settings(), need_detector=True)
    pipeline.detector.predictor.allow_tqdm = False
    results = {"load_models_s": time.perf_counter() - start, "backends": {
        "detector": pipeline.detector.backend, "classifier": pipeline.fpr.backend,
        "refiner": pipeline.refiner.encoder_name}, "scans": {}}
    for name in args.scans:
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        scan = scans_mod.load_scan(name)
        read_s = time.perf_counter() - start
        volume = scan.volume
        cpu_start = time.process_time()
        result = pipeline.run(volume)
        cpu_s = time.process_time() - cpu_start
        labels = result.labelmap()
        touched = [lesion.value for lesion in scan.lesions if (labels[scan.labels == lesion.value] > 0).any()]
        shape, spacing = volume.hu.shape, volume.spacing_zyx_mm
        results["scans"][name] = {
            "slices": int(shape[0]), "slice_mm": float(spacing[0]),
            "field_of_view_mm": float(shape[2] * spacing[2]), "read_s": read_s,
            **{k: round(float(v), 2) for k, v in result.timings_s.items()},
            "cpu_s": round(cpu_s, 1),  # all threads' CPU time: less sensitive to other jobs
            "nodules": len(result.nodules), "lesions": len(scan.lesions), "lesions_touched": len(touched),
            "trained_on": name in scans_mod.TRAIN_SCANS,
            "load_before": load_before, "load_after": os.getloadavg()[0]}
        if args.compare_detector:
            old = Detector(detector_folder("nodule-detector"), backend="torch", opencv_resampling=False,
                           crop_to_lungs=False)
            old.predictor.allow_tqdm = False
            for label, detector in (("before", old), ("now", pipeline.detector)):
                load = os.getloadavg()[0]
                start = time.perf_counter()
                detector.predict(volume)
                results["scans"][name][f"detector_{label}_s"] = round(time.perf_counter() - start, 2)
                results["scans"][name][f"detector_{label}_load"] = load
        print(name, json.dumps(results["scans"][name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nmodels loaded in {results['load_models_s']:.1f} s; backends {results['backends']}\n")
    print("| CT | slices | slice mm | FOV mm | read s | detect s | candidates s | refine s | measure s "
          "| total s | nodules kept (lesions touched / all) | load before / after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results["scans"].items():
        label = name + (" (trained on)" if r["trained_on"] else "")
        print(f"| {label} | {r['slices']} | {r['slice_mm']:.2f} | {r['field_of_view_mm']:.0f} | "
              f"{r['read_s']:.1f} | {r.get('detect_s', 0):.1f} | {r.get('candidates_s', 0):.1f} | "
              f"{r.get('refine_s', 0):.1f} | {r.get('measure_s', 0):.1f} | {r['total_s']:.1f} | "
              f"{r['nodules']} ({r['lesions_touched']} / {r['lesions']}) | "
              f"{r['load_before']:.1f} / {r['load_after']:.1f} |")
    if args.compare_detector:
        print("\n| CT | detector before (torch, every voxel, nnU-Net resampling) | now | load at start |")
        print("|---|---|---|---|")
        for name, r in results["scans"].items():
            print(f"| {name} | {r['detector_before_s']:.1f} s | {r['detector_now_s']:.1f} s | "
                  f"{r['detector_before_load']:.1f} / {r['detector_now_load']:.1f} |")


if __name__ == "__main__":
    main()
