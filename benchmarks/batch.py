"""Cohort batch on Ray against a plain loop of ``nodulesam segment`` calls, side by side.

    python benchmarks/batch.py [--cases 10] [--workers 1,2] [--out benchmarks/results/batch.json]
    python benchmarks/batch.py --quick          # 3 small crops: proves the benchmark runs

Over the shared full CTs (LIDC-IDRI-0001 and -0003 as DICOM, LIDC-IDRI-0314 as NIfTI, the NSCLC
LUNG1-002 and -003 CTs and the demo CT), repeated under new case ids to make ``--cases`` cases,
one run measures, one after the other on the same machine:

- ``loop``: one ``nodulesam segment CT -o .. --report ..`` process per case (models loaded
  each time: what a script around ``segment`` does today);
- ``batch_N``: ``nodulesam batch MANIFEST --out .. --workers N`` for each N (a local Ray started
  by the command, models loaded once per worker); cases per minute and each worker's peak memory;
- ``rerun``: the last batch run again on its own output folder, everything done (resume).

All runs use the default settings (detector, classifier, LiteMedSAM refiner, device auto).
The scans' role for the models: LIDC-IDRI-0001 and -0003 are in the detector's training data,
the others are not; that does not matter for speed. Writes JSON and appends a dated row to
BENCHMARKS.md. Needs the shared data and the cached demo CT (``make demo``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
NODULESAM = [sys.executable, "-m", "NoduleSAMLib.cli"]


def full_cts() -> list[tuple[str, Path]]:
    scans = SHARED / "lidc" / "scans"
    cts = [("LIDC-IDRI-0001", next(p.parent for p in (scans / "LIDC-IDRI-0001").rglob("*.dcm"))),
           ("LIDC-IDRI-0003", next(p.parent for p in (scans / "LIDC-IDRI-0003").rglob("*.dcm"))),
           ("LIDC-IDRI-0314", scans / "LIDC-IDRI-0314" / "ct.nii.gz"),
           ("LUNG1-002", SHARED / "chest" / "NSCLC-Radiomics-LUNG1-002" / "ct.nii.gz"),
           ("LUNG1-003", SHARED / "chest" / "NSCLC-Radiomics-LUNG1-003" / "ct.nii.gz"),
           ("demo", Path.home() / ".cache" / "nodulesam" / "demo" / "lung1_image.nrrd")]
    missing = [str(p) for _, p in cts if not p.exists()]
    if missing:
        sys.exit(f"benchmarks/batch.py: missing {', '.join(missing)} (shared data / make demo)")
    return cts


def small_crops(folder: Path) -> list[tuple[str, Path]]:
    """Three crops of LIDC-IDRI-0001 around its nodules (24-40 slices), for --quick."""
    import numpy as np
    import SimpleITK as sitk
    from NoduleSAMLib.geometry import apply_matrix
    from NoduleSAMLib.volume import read_ct

    ct = read_ct(full_cts()[0][1])
    crops = []
    for name, region in (("crop_a", np.s_[78:102, 301:429, 254:382]),
                         ("crop_b", np.s_[70:110, 260:460, 210:410]),
                         ("crop_c", np.s_[60:90, 200:400, 150:350])):
        z, y, x = (s.start for s in region)
        image = sitk.GetImageFromArray(ct.hu[region].astype(np.int16))
        image.SetSpacing(ct.spacing_ijk_mm.tolist())
        image.SetOrigin(apply_matrix(ct.ijk_to_lps, [x, y, z]).tolist())
        image.SetDirection(ct.direction_lps.ravel().tolist())
        sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
        crops.append((name, folder / f"{name}.nrrd"))
    return crops


def run(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--workers", default="1,2", help="worker counts to run (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="3 small crops instead of full CTs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "batch.json")
    parser.add_argument("--no-append", action="store_true", help="do not add a row to BENCHMARKS.md")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nodulesam-batch-bench-"))
    try:
        cts = small_crops(work) if args.quick else full_cts()
        count = 3 if args.quick else args.cases
        cases = [(f"{name}_{i // len(cts) + 1}", path)
                 for i, (name, path) in ((i, cts[i % len(cts)]) for i in range(count))]
        manifest = work / "manifest.csv"
        with open(manifest, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["case_id", "path"])
            writer.writerows([(case_id, str(path)) for case_id, path in cases])
        results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} CPU cores", "quick": args.quick,
                   "cases": [c for c, _ in cases], "load_average_before": os.getloadavg()}

        loop = work / "loop"
        loop.mkdir()
        start = time.perf_counter()
        for case_id, path in cases:
            run([*NODULESAM, "segment", str(path), "-o", str(loop / f"{case_id}.seg.nrrd"),
                 "--report", str(loop / f"{case_id}.json")])
        seconds = time.perf_counter() - start
        results["loop"] = {"seconds": round(seconds, 1), "cases_per_min": round(60 * count / seconds, 2),
                           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                                / 1024)}
        print(f"loop: {seconds:.0f} s", flush=True)

        last = None
        for workers in [int(w) for w in args.workers.split(",")]:
            out = work / f"batch_{workers}"
            seconds = run([*NODULESAM, "batch", str(manifest), "--out", str(out),
                           "--workers", str(workers)])
            summary = json.loads((out / "batch.json").read_text())
            if summary["n_ok"] != count:
                sys.exit(f"batch with {workers} worker(s): {summary['n_error']} error(s): see {out}")
            case_s = [r["seconds"] for r in summary["cases"]]
            results[f"batch_{workers}"] = {
                "seconds": round(seconds, 1), "cases_per_min": round(60 * count / seconds, 2),
                "sum_case_seconds": round(sum(case_s), 1),
                "worker_peak_rss_mb": [w["peak_rss_mb"] for w in summary["workers"]],
                "worker_load_models_s": [w["load_models_s"] for w in summary["workers"]],
                "speedup_vs_loop": round(results["loop"]["seconds"] / seconds, 2)}
            print(f"batch, {workers} worker(s): {seconds:.0f} s", flush=True)
            last = out
        seconds = run([*NODULESAM, "batch", str(manifest), "--out", str(last)])
        summary = json.loads((last / "batch.json").read_text())
        results["rerun"] = {"seconds": round(seconds, 1), "resumed": summary["n_resumed"],
                            "of": count}
        results["load_average_after"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if args.no_append:
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=False,
                            capture_output=True, text=True).stdout.strip()
    batches = [k for k in results if k.startswith("batch_")]
    row = (f"| {results['date']} | {commit} | `python benchmarks/batch.py {' '.join(sys.argv[1:])}`"
           f" | {count} | {results['loop']['cases_per_min']} | "
           + " | ".join(f"{results[k]['cases_per_min']} ({results[k]['speedup_vs_loop']}x)"
                        for k in batches)
           + f" | {', '.join(str(round(max(results[k]['worker_peak_rss_mb']))) for k in batches)} MB"
           f" | {results['rerun']['seconds']} s | {results['load_average_before'][0]:.1f} |\n")
    add_row(REPO / "BENCHMARKS.md", row)


TABLE_HEADER = "| date | commit | command | cases | loop of `segment` (cases/min) |"


def add_row(path: Path, row: str) -> None:
    """Insert the row at the end of this benchmark's table (the file's end if it has none)."""
    lines = path.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith(TABLE_HEADER)]
    if not starts:
        lines.append(row)
    else:
        end = starts[-1] + 1
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        lines.insert(end, row)
    path.write_text("".join(lines))


if __name__ == "__main__":
    main()
