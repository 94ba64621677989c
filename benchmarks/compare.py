"""Follow-up comparison errors on real scans under known transforms (issue 11, section 4).

No real pair of one patient's CTs is in the shared data, so, on whole scans and their reference
(50 % consensus) masks:

1. each LIDC scan against a rigidly moved (2, -3, 4 deg; 8, -6, 5 mm) copy of itself resampled to
   0.8 x 0.8 x 2.0 mm: target registration error (TRE) over a 5x5x5 grid of the central 60 % and
   at the nodules, rigid and with the affine stage tried; volume change (the partial-volume
   error of resampling), trend, matches;
2. LIDC-IDRI-0314 with a real VOI nodule (LIDC-IDRI-0119_N1) pasted at scale 1 in the prior and
   at scale 2^(1/3) (twice the volume) in the moved current: the volume change and VDT against
   the truth, and the partial-volume error of the pastes;
3. each scan against the other patients': false matches.

    python benchmarks/compare.py [--out benchmarks/results/compare.json]

Writes the JSON and appends a dated row per scenario to BENCHMARKS.md. The masks are the
readers' (no model is involved), so no scan here trained anything that is measured.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "NoduleSAM"), str(ROOT / "training")]

import SimpleITK as sitk
from nodulesam_train.detector_data import default_lidc_dir
from NoduleSAMLib import compare
from NoduleSAMLib.compare import Scan, findings_from_labelmap, moved_copy
from NoduleSAMLib.volume import CTVolume, read_ct

ROTATION_DEG, TRANSLATION_MM, SPACING_MM = (2.0, -3.0, 4.0), (8.0, -6.0, 5.0), (0.8, 0.8, 2.0)
DATES = dt.date(2020, 1, 10), dt.date(2020, 7, 8)  # 180 days
SCANS = ("LIDC-IDRI-0001", "LIDC-IDRI-0003", "LIDC-IDRI-0314")
TABLE_HEADER = "| date | commit | scenario | TRE grid mean / max mm |"


def load(lidc: Path, name: str):
    path = lidc / "scans" / name
    source = path / "ct.nii.gz" if (path / "ct.nii.gz").is_file() else \
        next(p.parent for p in path.rglob("*.dcm"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(lidc / "scans" / f"{name}.consensus50.nii.gz")))
    return read_ct(source), labels.astype(np.uint16)


def grid(volume: CTVolume) -> np.ndarray:
    axes = [np.linspace(0.2, 0.8, 5) * (n - 1) for n in volume.hu.shape]
    return volume.zyx_to_lps(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3))


def moved_scenario(name, ct, labels):
    moved, moved_labels, truth = moved_copy(ct, ROTATION_DEG, TRANSLATION_MM, labels, SPACING_MM)
    prior = Scan(ct, findings_from_labelmap(ct, labels), labels, DATES[0])
    current = Scan(moved, findings_from_labelmap(moved, moved_labels), moved_labels, DATES[1])
    row = {"scan": name, "nodules": len(prior.findings)}
    for affine in (False, True):
        registration = compare.register(ct, moved, affine=affine)
        tre = compare.target_registration_error(registration, truth, grid(ct))
        at = compare.target_registration_error(registration, truth,
                                               [f.centroid_lps_mm for f in prior.findings])
        key = "affine_tried" if affine else "rigid"
        row[key] = {"kept": registration.kind, "seconds": round(registration.seconds, 1),
                    "metrics": registration.metrics, "tre_grid_mean_mm": float(tre.mean()),
                    "tre_grid_max_mm": float(tre.max()), "tre_nodules_max_mm": float(at.max())}
        if not affine:
            result = compare.compare(prior, current, registration)
    row["matches"] = len(result["matches"])
    row["one_to_one"] = all(m["prior"]["label"] == m["current"]["label"] for m in result["matches"])
    row["new"], row["resolved"] = len(result["new"]), len(result["resolved"])
    row["volume_change_pct"] = [round(m["volume_change_pct"], 2) for m in result["matches"]]
    row["trends"] = [m["trend"] for m in result["matches"]]
    row["local_similarity"] = [round(m["local_similarity"], 3) for m in result["matches"]]
    return row


def pasted_scenario(lidc, ct, labels):
    from nodulesam_train.paste import paste, paste_allowed, read_voi

    with open(lidc / "voi" / "cases.csv", newline="") as handle:
        case = next(r for r in csv.DictReader(handle) if r["case_id"] == "LIDC-IDRI-0119_N1")
    nodule = read_voi(lidc, case)
    true_mm3 = nodule.mask.sum() * np.prod(nodule.spacing_zyx_mm)
    scale = 2 ** (1 / 3)
    grown = replace(nodule, spacing_zyx_mm=tuple(np.asarray(nodule.spacing_zyx_mm) * scale))
    spacing = ct.spacing_zyx_mm
    allowed = paste_allowed(ct.hu, labels, spacing)
    places = np.argwhere(allowed[::4, ::8, ::8]) * [4, 8, 8]
    pasted, errors = {}, []
    for name, version, factor in (("prior", nodule, 1.0), ("grown", grown, scale ** 3)):
        hu, lab = ct.hu.copy(), labels.copy()
        centre = paste(hu, lab, allowed.copy(), 9, version, spacing, np.random.default_rng(0),
                       places if not pasted else np.array([pasted["prior"][2]]))
        pasted[name] = (hu, lab, np.round(centre).astype(int))
        errors.append(float((lab == 9).sum() * np.prod(spacing) / (true_mm3 * factor) - 1))
    prior_ct = CTVolume(pasted["prior"][0], ct.ijk_to_ras, "prior")
    moved, moved_labels, truth = moved_copy(CTVolume(pasted["grown"][0], ct.ijk_to_ras, "grown"),
                                            ROTATION_DEG, TRANSLATION_MM, pasted["grown"][1],
                                            (0.7, 0.7, 1.0))
    prior = Scan(prior_ct, findings_from_labelmap(prior_ct, pasted["prior"][1]), pasted["prior"][1], DATES[0])
    current = Scan(moved, findings_from_labelmap(moved, moved_labels), moved_labels, DATES[1])
    registration = compare.register(prior_ct, moved)
    result = compare.compare(prior, current, registration)
    found = next(m for m in result["matches"] if m["prior"]["label"] == 9)
    tre = compare.target_registration_error(registration, truth, grid(prior_ct))
    return {"scan": "LIDC-IDRI-0314 + LIDC-IDRI-0119_N1", "scale": scale,
            "true_change_pct": 100 * (scale ** 3 - 1), "volume_change_pct": found["volume_change_pct"],
            "true_vdt_days": 180.0, "vdt_days": found["vdt_days"], "trend": found["trend"],
            "paste_partial_volume_error_pct": [100 * e for e in errors],
            "lung_rads_growth": found["lung_rads_growth"], "tre_grid_max_mm": float(tre.max()),
            "matches": len(result["matches"]), "new": len(result["new"]),
            "resolved": len(result["resolved"])}


def other_patient_scenario(scans):
    rows = []
    for a in SCANS:
        for b in SCANS:
            if a == b:
                continue
            (ca, la), (cb, lb) = scans[a], scans[b]
            result = compare.compare(Scan(ca, findings_from_labelmap(ca, la), la, DATES[0]),
                                     Scan(cb, findings_from_labelmap(cb, lb), lb, DATES[1]))
            rows.append({"prior": a, "current": b, "matches": len(result["matches"]),
                         "new": len(result["new"]), "resolved": len(result["resolved"])})
    return rows


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compare.json"))
    parser.add_argument("--no-markdown", action="store_true", help="do not append to BENCHMARKS.md")
    args = parser.parse_args()
    lidc = default_lidc_dir()
    start = time.perf_counter()
    scans = {name: load(lidc, name) for name in SCANS}
    moved = [moved_scenario(name, *scans[name]) for name in SCANS]
    for row in moved:
        print(json.dumps(row))
    pasted = pasted_scenario(lidc, *scans["LIDC-IDRI-0314"])
    print(json.dumps(pasted))
    others = other_patient_scenario(scans)
    print(json.dumps(others))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=False,
                            text=True).stdout.strip()
    out = {"date": dt.date.today().isoformat(), "commit": commit,
           "machine": f"{cpu_name()}, {os.cpu_count()} cores",
           "seconds": time.perf_counter() - start, "moved_copy": moved, "pasted": pasted,
           "other_patient": others}
    Path(args.out).write_text(json.dumps(out, indent=2, default=float))
    if args.no_markdown:
        return
    lines = []
    for row in moved:
        r, a = row["rigid"], row["affine_tried"]
        lines.append(f"| {out['date']} | {commit} | moved copy of {row['scan']} | "
                     f"{r['tre_grid_mean_mm']:.2f} / {r['tre_grid_max_mm']:.2f} | "
                     f"{r['tre_nodules_max_mm']:.2f} | {a['kept']} ({a['tre_grid_max_mm']:.2f}) | "
                     f"{', '.join(f'{v:+.1f}' for v in row['volume_change_pct'])} | "
                     f"{', '.join(row['trends'])} | {row['matches']}/{row['nodules']} "
                     f"(one-to-one: {row['one_to_one']}), {row['new']} new, {row['resolved']} resolved |")
    p = pasted
    lines.append(f"| {out['date']} | {commit} | {p['scan']} at 2x volume | - / {p['tre_grid_max_mm']:.2f} | - | - | "
                 f"{p['volume_change_pct']:+.1f} (true {p['true_change_pct']:+.1f}; pastes "
                 f"{', '.join(f'{e:+.1f}' for e in p['paste_partial_volume_error_pct'])}) | "
                 f"{p['trend']}, VDT {p['vdt_days']:.0f} d (true 180) | {p['matches']} matched, "
                 f"{p['new']} new, {p['resolved']} resolved |")
    false = sum(r["matches"] for r in others)
    lines.append(f"| {out['date']} | {commit} | other patients ({len(others)} ordered pairs of the 3 scans) "
                 f"| - | - | - | - | - | {false} false matches |")
    append_rows(ROOT / "BENCHMARKS.md", lines)


def append_rows(path: Path, rows: list[str]) -> None:
    """Add ``rows`` at the end of this benchmark's table (other sections may follow it)."""
    text = path.read_text().splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith(TABLE_HEADER))
    end = start
    while end + 1 < len(text) and text[end + 1].startswith("|"):
        end += 1
    path.write_text("\n".join(text[:end + 1] + rows + text[end + 1:]) + "\n")


if __name__ == "__main__":
    main()
