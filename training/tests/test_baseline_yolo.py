"""``nodulesam-train baseline-yolo`` on a handful of real LIDC VOI cases.

YOLO11n-seg is really trained (one epoch on the first few cases of ``train``, 64 px input), really
predicts, and is scored by evaluate's protocol; ``--against`` gets a real ``evaluate`` run of the
same test cases. Needs the shared LIDC data; skipped without it.
"""
from __future__ import annotations

import csv
import json
import socket

import numpy as np
import pytest

from lidc_data import LIDC_DIR, needs_voi

pytestmark = needs_voi
VOI = LIDC_DIR / "voi"
LIMIT = 4


def _dsc(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_polygon_labels_reproduce_the_consensus():
    """The label polygons, rasterised by Ultralytics' own polygon2mask (at 4x, then downsampled
    4x as its loss does), give back the consensus mask of real nodules."""
    from ultralytics.data.utils import polygon2mask

    from nodulesam_train.baseline_yolo import mask_polygons
    from nodulesam_train.detector_data import voi_central_slices

    slices = voi_central_slices(LIDC_DIR, split="train", limit=12)
    for s in slices:
        h, w = s.mask.shape
        polys = [poly * 4 for poly in mask_polygons(s.mask > 0)]
        assert polys, s.name
        back = np.zeros((h, w), bool)
        for poly in polys:  # one instance per polygon, as Ultralytics' labels
            back |= polygon2mask((4 * h, 4 * w), [poly.ravel()], downsample_ratio=4) > 0
        assert _dsc(back, s.mask) > 0.95, s.name
    single = np.zeros((9, 9), bool)
    single[4, 4] = True  # a one-pixel component still makes a polygon around that pixel
    (poly,) = mask_polygons(single)
    assert poly.min() > 3.8 and poly.max() < 5.2


def test_export_dataset(tmp_path):
    from nodulesam_train.baseline_yolo import export_dataset

    data = export_dataset(VOI, tmp_path / "ds", limit=5)
    text = data.read_text()
    assert f"path: {tmp_path / 'ds'}" in text and "0: nodule" in text
    for split in ("train", "val"):
        images = sorted((tmp_path / "ds" / "images" / split).glob("*.png"))
        labels = sorted((tmp_path / "ds" / "labels" / split).glob("*.txt"))
        assert len(images) == len(labels) == 5
        for label in labels:
            lines = label.read_text().splitlines()
            assert lines, label
            for line in lines:
                cls, *xy = line.split()
                assert cls == "0" and len(xy) >= 6 and len(xy) % 2 == 0
                assert all(0.0 <= float(v) <= 1.0 for v in xy)


@pytest.fixture(scope="module")
def eval_test(tmp_path_factory, request):
    """A real ``evaluate`` of the first LIMIT test cases (the bundled nodule-voi, else the suite's tiny model)."""
    from NoduleSAMLib.errors import NoduleSAMError
    from NoduleSAMLib.models import detector_folder

    from nodulesam_train.cli import main

    try:
        model = detector_folder("nodule-voi")
    except NoduleSAMError:
        model = request.getfixturevalue("tiny_voi_model")
    out = tmp_path_factory.mktemp("eval_test")
    assert main(["evaluate", "--voi-dir", str(VOI), "--split", "test", "--limit", str(LIMIT),
                 "--model", str(model), "--methods", "nnunet,hybrid,readers", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory, eval_test):
    """baseline-yolo end to end, with every network call refused and recorded."""
    from nodulesam_train.cli import main

    attempts = []
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(("connect", address))
            raise OSError("network disabled in this test")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        attempts.append(("getaddrinfo", host))
        raise socket.gaierror("network disabled in this test")

    out = tmp_path_factory.mktemp("yolo")
    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", connect)
    mp.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        rc = main(["baseline-yolo", "--voi-dir", str(VOI), "--out", str(out), "--limit", str(LIMIT),
                   "--epochs", "1", "--imgsz", "64", "--batch", "4", "--workers", "0",
                   "--predict-splits", "train,val,test", "--against", str(eval_test)])
    finally:
        mp.undo()
    assert rc == 0
    return out, attempts


def test_baseline_yolo_makes_no_network_call(yolo_run):
    _, attempts = yolo_run
    assert attempts == []


def test_baseline_yolo_scores_by_evaluates_protocol(yolo_run):
    """Every case of every split has its mask at the slice's full size, and the per-case metrics
    are metrics.overlap of that mask against the 50 % consensus of evaluate's central slice."""
    from nodulesam_train.lidc import read_cases_csv, voi_case
    from nodulesam_train.metrics import overlap

    out, _ = yolo_run
    rows = list(csv.DictReader(open(out / "cases.csv")))
    table = read_cases_csv(VOI / "cases.csv")
    for split in ("train", "val", "test"):
        expected = [r for r in table if r["split"] == split][:LIMIT]
        got = [r for r in rows if r["split"] == split]
        assert [r["case_id"] for r in got] == [r["case_id"] for r in expected]
        for entry, row in zip(expected, got):
            case = voi_case(VOI, entry)
            with np.load(out / "masks" / f"{case.case_id}.npz") as z:
                assert z.files == ["yolo"]
                mask = z["yolo"]
            assert mask.dtype == np.uint8 and mask.shape == case.hu.shape
            m = overlap(mask > 0, case.consensus > 0)
            for k in ("dsc", "iou", "precision", "recall"):
                assert float(row[f"yolo_{k}"]) == pytest.approx(m[k], abs=1e-6), (case.case_id, k)
            assert row["yolo_detected"] == str(m["detected"])
            assert row["yolo_empty"] == str(not mask.any())
            if not mask.any():  # found nothing: a miss with DSC 0
                assert float(row["yolo_dsc"]) == 0.0 and row["yolo_detected"] == "False"


def test_baseline_yolo_summary_and_wilcoxon(yolo_run, eval_test):
    from nodulesam_train.evaluate import SUMMARY_KEYS, _wilcoxon

    out, _ = yolo_run
    s = json.loads((out / "summary.json").read_text())
    assert s["split"] == "test" and s["n_cases"] == LIMIT
    assert set(SUMMARY_KEYS) | {"empty"} <= set(s["yolo"])
    assert s["model"]["name"] == "yolo11n-seg" and s["model"]["from_scratch"] is True
    assert (out / "train" / "weights" / "best.pt").is_file()
    # the threshold is the val sweep's best mean DSC
    assert s["conf_source"].endswith("val")
    best = max(s["conf_sweep_val"], key=lambda r: (r["dsc_mean"], -r["conf"]))
    assert s["conf"] == best["conf"]
    assert set(s["splits"]) == {"train", "val", "test"}
    rows = [r for r in csv.DictReader(open(out / "cases.csv")) if r["split"] == "test"]
    assert s["yolo"]["dsc_mean"] == pytest.approx(np.mean([float(r["yolo_dsc"]) for r in rows]), abs=1e-6)
    assert s["yolo"]["empty"] == sum(r["yolo_empty"] == "True" for r in rows)
    assert s["yolo"]["missed"] == sum(r["yolo_detected"] == "False" for r in rows)
    # the paired test against evaluate's hybrid, over the same cases
    ev = {r["case_id"]: r for r in csv.DictReader(open(eval_test / "cases.csv"))}
    w = s["wilcoxon_vs_hybrid"]
    assert w["n_cases"] == LIMIT
    for k in ("dsc", "iou"):
        expected = _wilcoxon([float(r[f"yolo_{k}"]) for r in rows], [float(ev[r["case_id"]][f"hybrid_{k}"]) for r in rows])
        assert w[f"p_{k}"] == (pytest.approx(expected) if expected is not None else None)
    md = (out / "summary.md").read_text()
    assert "| yolo |" in md and "| hybrid |" in md and "| nnunet |" in md
    assert "yolo vs hybrid" in md and "260 of 475" in md


def test_baseline_yolo_reuses_weights_with_a_given_threshold(yolo_run, tmp_path):
    """--weights skips training; --conf fixes the threshold (no val sweep)."""
    from nodulesam_train.cli import main

    out, _ = yolo_run
    again = tmp_path / "again"
    rc = main(["baseline-yolo", "--voi-dir", str(VOI), "--out", str(again), "--limit", "2",
               "--weights", str(out / "train" / "weights" / "best.pt"), "--imgsz", "64",
               "--conf", "0.5", "--predict-splits", "test"])
    assert rc == 0
    s = json.loads((again / "summary.json").read_text())
    assert s["conf"] == 0.5 and s["conf_sweep_val"] is None and set(s["splits"]) == {"test"}
    assert not (again / "train").exists() and len(list((again / "masks").glob("*.npz"))) == 2


def test_baseline_yolo_errors_are_one_line(tmp_path, capsys):
    from nodulesam_train.cli import main

    rc = main(["baseline-yolo", "--voi-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--epochs", "1"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nodulesam-train: error:") and "\n" not in err
