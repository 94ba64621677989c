"""Whole-CT benchmark: candidates after each filter, and 3D refinement of the found nodules.

    python benchmarks/whole_ct.py [--lidc-dir DIR] [--out benchmarks/results/whole_ct.json]

On every CT with a reference mask (LIDC-IDRI-0001 and -0003 with their 50 % consensus from the
shared data, and the demo CT with its lesion label), runs the bundled detector once and reports:

- candidates: how many the detector gives (>= the minimum volume), after the lung-field gate,
  after the flat-detection filter and after the classifier at the default operating point
  (``Pipeline.candidate_stages``), with how many of them overlap a reference nodule;
- per found nodule: the 3D DSC against the reference nodules it overlaps of the detector's own
  mask, of SAM alone (``detector_weight=0``) and of the detector-SAM vote (the default).

LIDC-IDRI-0001 and -0003 are in the detector's and the classifier's training data, so the
scores there are in-distribution; the demo CT is held out (``nodulesam-train evaluate-detection``
gives the held-out FROC). Writes JSON and prints a Markdown table. Needs the shared data
and the cached demo CT (``make demo`` fetches it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
from nodulesam_train.detector_data import default_lidc_dir  # noqa: E402
from nodulesam_train.metrics import overlap  # noqa: E402


def main() -> None:
    import SimpleITK as sitk

    from NoduleSAMLib.demo_data import demo_ct
    from NoduleSAMLib.detect import Detector
    from NoduleSAMLib.fpr import DEFAULT_SENSITIVITY, FalsePositiveReducer
    from NoduleSAMLib.models import build_sam, detector_folder, fpr_folder
    from NoduleSAMLib.pipeline import Pipeline
    from NoduleSAMLib.refine import BoxRefiner, RefineSettings
    from NoduleSAMLib.volume import read_ct

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lidc-dir", type=Path, default=Path(default_lidc_dir()))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "whole_ct.json")
    args = parser.parse_args()

    scans = args.lidc_dir / "scans"
    image, label = demo_ct()
    cts = {"LIDC-IDRI-0001": (scans / "LIDC-IDRI-0001", scans / "LIDC-IDRI-0001.consensus50.nii.gz"),
           "LIDC-IDRI-0003": (scans / "LIDC-IDRI-0003", scans / "LIDC-IDRI-0003.consensus50.nii.gz"),
           "demo (pyradiomics lung1)": (image, label)}
    detector = Detector(detector_folder("nodule-detector"))
    detector.predictor.allow_tqdm = False
    fpr = FalsePositiveReducer(fpr_folder("nodule-fpr"))
    pipeline = Pipeline(detector, fpr=fpr, fpr_threshold=fpr.threshold(DEFAULT_SENSITIVITY))
    sam = build_sam("litemedsam")
    refiners = {"sam_alone": BoxRefiner(sam, RefineSettings(detector_weight=0.0)),
                "vote": BoxRefiner(sam)}
    results = {}
    for name, (ct_path, label_path) in cts.items():
        start = time.perf_counter()
        volume = read_ct(ct_path)
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
        detection = detector.predict(volume)

        def overlaps(c):
            z0, z1, y0, y1, x0, x1 = c.box_ijk
            return np.unique(reference[z0:z1, y0:y1, x0:x1][c.detector_mask])

        stages = pipeline.candidate_stages(volume, detection)
        entry = {"candidates": {stage: len(found) for stage, found in stages.items()},
                 "true_candidates": {stage: sum(bool(overlaps(c).any()) for c in found)
                                     for stage, found in stages.items()},
                 "reference_nodules": int(len(np.unique(reference[reference > 0]))), "nodules": []}
        for candidate in stages["kept"]:
            labels = overlaps(candidate)
            labels = labels[labels > 0]
            if not labels.size:
                continue
            truth = np.isin(reference, labels)
            z0, z1, y0, y1, x0, x1 = candidate.box_ijk
            row = {"name": candidate.name, "reference_labels": labels.tolist(),
                   "reference_voxels": int(truth.sum())}
            masks = {"detector": candidate.detector_mask}
            masks |= {key: refiner.refine(volume.hu, candidate, name) for key, refiner in refiners.items()}
            for key, mask in masks.items():
                full = np.zeros(truth.shape, bool)
                full[z0:z1, y0:y1, x0:x1] = mask
                row[f"dsc_{key}"] = overlap(full, truth)["dsc"]
            entry["nodules"].append(row)
        entry["seconds"] = time.perf_counter() - start
        results[name] = entry
        print(name, json.dumps(entry), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n| CT | candidates: detected / in lungs / not flat / kept by the classifier (true) | nodule | "
          "3D DSC detector | SAM alone | vote |")
    print("|---|---|---|---|---|---|")
    for name, entry in results.items():
        c, t = entry["candidates"], entry["true_candidates"]
        counts = " / ".join(f"{c[s]} ({t[s]})" for s in ("detected", "in_lungs", "not_flat", "kept"))
        for row in entry["nodules"] or [{"name": "none found"}]:
            print(f"| {name} | {counts} | {row['name']} | {row.get('dsc_detector', float('nan')):.3f} | "
                  f"{row.get('dsc_sam_alone', float('nan')):.3f} | {row.get('dsc_vote', float('nan')):.3f} |")


if __name__ == "__main__":
    main()
