"""``nodulesam batch`` on real CTs: case discovery, resume keys, the cohort tables, and a real
batch on a local Ray of 2 workers (a broken input, a worker killed mid-case, a rerun).

The CTs are crops of LIDC-IDRI-0001 written as NRRD (24 and 40 slices around its nodules), so
that the real default detector and classifier run in seconds on 2 cores; the fast tests keep the
detector's masks (``--no-refine``), the slow one refines with the bundled LiteMedSAM.
"""
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from NoduleSAMLib import batch
from NoduleSAMLib.cli import main
from NoduleSAMLib.errors import NoduleSAMError
from NoduleSAMLib.settings import DEFAULTS

REQUIRED_CASE_COLUMNS = ["case_id", "path", "status", "error", "n_nodules", "seconds"]


def write_crop(ct, region, path):
    """A sub-volume of a real CT as NRRD, with its true geometry."""
    from NoduleSAMLib.geometry import apply_matrix

    z, y, x = (s.start for s in region)
    image = sitk.GetImageFromArray(ct.hu[region].astype(np.int16))
    image.SetSpacing(ct.spacing_ijk_mm.tolist())
    image.SetOrigin(apply_matrix(ct.ijk_to_lps, [x, y, z]).tolist())
    image.SetDirection(ct.direction_lps.ravel().tolist())
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def cohort(ct_0001, tmp_path_factory):
    """A folder of two real CT crops and one broken input (text named .nrrd)."""
    folder = tmp_path_factory.mktemp("cohort")
    write_crop(ct_0001, np.s_[78:102, 301:429, 254:382], folder / "crop_a.nrrd")
    (folder / "more").mkdir()
    write_crop(ct_0001, np.s_[70:110, 260:460, 210:410], folder / "more" / "crop_b.nrrd")
    (folder / "broken.nrrd").write_text("this is not a CT\n")
    return folder


def segment_outputs(ct_path, tmp_path, *options):
    """What ``nodulesam segment`` writes for this CT: its labelmap, NRRD fields and report."""
    seg, report = tmp_path / "segment.seg.nrrd", tmp_path / "segment.json"
    assert main(["segment", str(ct_path), "-o", str(seg), "--report", str(report), *options]) == 0
    return read_outputs(seg, report)


def read_outputs(seg, report):
    image = sitk.ReadImage(str(seg))
    fields = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    data = json.loads(report.read_text())
    del data["timings_s"]  # the only part that differs between two runs
    return sitk.GetArrayFromImage(image), fields, data


# ---------------------------------------------------------------------------------------------
# Without Ray

def test_find_cases_one_case_per_file_and_per_series(series_0001, lidc_dir, tmp_path):
    """Image files and DICOM series are found recursively; a folder holding two series gives two
    cases with their UIDs; our own outputs (.seg.nrrd, the --out folder) are not inputs."""
    series_0003 = next(p.parent for p in (lidc_dir / "scans" / "LIDC-IDRI-0003").rglob("*.dcm"))
    mixed = tmp_path / "in" / "patient" / "mixed"
    mixed.mkdir(parents=True)
    for i, file in enumerate(sorted(series_0001.glob("*.dcm"))[:3]):
        shutil.copy(file, mixed / f"a{i}.dcm")
    for i, file in enumerate(sorted(series_0003.glob("*.dcm"))[:3]):
        shutil.copy(file, mixed / f"b{i}")  # no suffix: found by the DICM preamble
    (mixed / "notes.txt").write_text("not a slice")
    single = tmp_path / "in" / "single"
    single.mkdir()
    for file in sorted(series_0001.glob("*.dcm"))[:2]:
        shutil.copy(file, single / file.name)
    (tmp_path / "in" / "ct.nii.gz").write_bytes(b"x")
    (tmp_path / "in" / "ct.seg.nrrd").write_bytes(b"x")
    (tmp_path / "in" / "out").mkdir()
    (tmp_path / "in" / "out" / "old.nrrd").write_bytes(b"x")

    cases = batch.find_cases(tmp_path / "in", skip=tmp_path / "in" / "out")
    by_id = {c.case_id: c for c in cases}
    assert "ct" in by_id and by_id["ct"].path.endswith("ct.nii.gz")
    assert by_id["single"].path == str(single) and by_id["single"].series_uid is None
    mixed_cases = [c for c in cases if c.case_id.startswith("patient_mixed_")]
    assert len(mixed_cases) == 2 and len(cases) == 4
    import pydicom

    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)
            for f in (mixed / "a0.dcm", mixed / "b0")}
    assert {c.series_uid for c in mixed_cases} == uids
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing")
    with pytest.raises(NoduleSAMError, match="holds no CT"):
        batch.find_cases(tmp_path / "empty")


def test_manifest_paths_optional_columns_and_errors(tmp_path):
    (tmp_path / "ct").mkdir()
    (tmp_path / "m.csv").write_text("case_id,path,series_uid,date\nP1,ct/a.nrrd,,2024-01-02\n"
                                    "P2,/abs/b,1.2.3,\n")
    cases = batch.read_manifest(tmp_path / "m.csv")
    assert cases == [batch.Case("P1", str(tmp_path / "ct" / "a.nrrd"), None, "2024-01-02"),
                     batch.Case("P2", "/abs/b", "1.2.3", None)]
    (tmp_path / "short.csv").write_text("case_id,path\nP1,a.nrrd\n")
    assert batch.cases_from_inputs(tmp_path / "short.csv")[0].series_uid is None
    for text, message in (("id,file\nP1,a\n", "no case_id and no path column"),
                          ("case_id,path\nP1,a\nP1,b\n", "given twice"),
                          ("case_id,path\nP 1/x,a\n", "may hold only"),
                          ("case_id,path\nP1,\n", "line 2 has no case_id or no path"),
                          ("case_id,path\n", "lists no case")):
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(NoduleSAMError, match=message):
            batch.read_manifest(tmp_path / "bad.csv")


def test_resume_key_follows_content_and_settings(series_0001, tmp_path):
    case = batch.Case("c", str(series_0001))
    content = batch.input_sha256(case)
    assert content == batch.input_sha256(batch.Case("other id", str(series_0001)))
    assert content != batch.input_sha256(batch.Case("c", str(series_0001), "1.2.3"))
    first = min(series_0001.glob("*.dcm"))
    (tmp_path / "a.dcm").write_bytes(first.read_bytes())
    one = batch.input_sha256(batch.Case("f", str(tmp_path / "a.dcm")))
    (tmp_path / "a.dcm").write_bytes(first.read_bytes()[:-1] + b"\x00")
    assert batch.input_sha256(batch.Case("f", str(tmp_path / "a.dcm"))) != one
    key = batch.done_key(content, DEFAULTS, False)
    assert key == batch.done_key(content, DEFAULTS, False)
    assert key != batch.done_key(content, DEFAULTS.with_candidates(sensitivity="specific"), False)
    assert key != batch.done_key(content, DEFAULTS, True)
    assert key != batch.done_key(one, DEFAULTS, False)


def test_worker_without_ray_writes_segment_outputs_and_tables(cohort, tmp_path):
    """The worker's own code path, in this process: outputs identical to ``segment``'s; a broken
    CT is an error row with its one-line message; the tables have the documented columns."""
    settings = DEFAULTS
    worker = batch.CaseWorker(settings.to_dict(), no_refine=True)
    out = tmp_path / "out"
    rows = []
    for case in (batch.Case("a", str(cohort / "crop_a.nrrd")),
                 batch.Case("broken", str(cohort / "broken.nrrd"))):
        content = batch.input_sha256(case)
        rows.append(worker.run(batch.asdict(case), str(out), batch.done_key(content, settings, True),
                               content) | {"attempts": 1, "resumed": False})
    ok, broken = rows
    assert ok["status"] == "ok" and ok["n_nodules"] >= 1, ok
    assert broken["status"] == "error" and "cannot read the image" in broken["error"]
    assert "\n" not in broken["error"]
    assert not batch.case_paths(out, "broken")["done"].exists()
    paths = batch.case_paths(out, "a")
    expected = segment_outputs(cohort / "crop_a.nrrd", tmp_path, "--no-refine")
    got = read_outputs(paths["segmentation"], paths["report"])
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1] == expected[1] and got[2] == expected[2]
    assert batch.finished_row(out, batch.Case("a", str(cohort / "crop_a.nrrd")),
                              json.loads(paths["done"].read_text())["key"])["resumed"] is True
    assert batch.finished_row(out, batch.Case("a", ""), "another key") is None

    batch.write_tables(out, rows)
    check_tables(out, rows)


def test_worker_writes_html_pdf_and_dicom_per_case(cohort, series_0001, tmp_path):
    """The per-case HTML, PDF, DICOM SEG and SR, from the same functions as ``segment``'s: a
    DICOM series gets all four (the SEG references its CT slices), an NRRD case all but DICOM
    with a message saying why; a rerun asking for an output a case lacks segments it again."""
    import pydicom

    series = tmp_path / "series"
    series.mkdir()
    files = sorted(series_0001.glob("*.dcm"),
                   key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    for file in files[78:102]:
        shutil.copy(file, series / file.name)
    settings, out = DEFAULTS, tmp_path / "out"
    worker = batch.CaseWorker(settings.to_dict(), no_refine=True, extras=("html", "pdf", "dicom"))
    rows = {}
    for case in (batch.Case("dicom", str(series)), batch.Case("nrrd", str(cohort / "crop_a.nrrd"))):
        content = batch.input_sha256(case)
        rows[case.case_id] = worker.run(batch.asdict(case), str(out),
                                        batch.done_key(content, settings, True), content)
    dicom, nrrd = rows["dicom"], rows["nrrd"]
    assert dicom["status"] == nrrd["status"] == "ok" and dicom["n_nodules"] >= 1
    seg = pydicom.dcmread(dicom["dicom_seg"])
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == dicom["n_nodules"]
    referenced = {item.ReferencedSOPInstanceUID for item in
                  seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
                          for f in series.glob("*.dcm")}
    assert pydicom.dcmread(dicom["dicom_sr"]).Modality == "SR"
    report = json.loads(Path(dicom["report"]).read_text())
    html = Path(dicom["html"]).read_text()
    assert all(n["name"] in html for n in report["nodules"])
    assert Path(dicom["pdf"]).read_bytes().startswith(b"%PDF")
    assert "dicom_seg" not in nrrd and Path(nrrd["html"]).is_file()
    assert any("not read from a DICOM series" in m for m in nrrd["messages"])
    assert not list(out.glob("cases/.*partial*"))

    key = json.loads(batch.case_paths(out, "nrrd")["done"].read_text())["key"]
    case = batch.Case("nrrd", str(cohort / "crop_a.nrrd"))
    assert batch.finished_row(out, case, key, ("html", "pdf", "dicom"))["resumed"] is True
    Path(nrrd["pdf"]).unlink()
    assert batch.finished_row(out, case, key, ("html", "pdf")) is None
    assert batch.finished_row(out, case, key, ("html",))["resumed"] is True
    with pytest.raises(NoduleSAMError, match="unknown batch output"):
        batch.check_extras(("html", "png"))


def check_tables(out, rows):
    """cases.csv and nodules.csv: documented columns, one row per case and per nodule."""
    import pandas as pd

    cases = pd.read_csv(out / "cases.csv", keep_default_na=False)
    assert list(cases.columns[:len(batch.CASE_COLUMNS)]) == batch.CASE_COLUMNS
    assert set(REQUIRED_CASE_COLUMNS) <= set(cases.columns)
    assert list(cases["case_id"]) == [r["case_id"] for r in rows]
    assert set(cases["status"]) <= {"ok", "error"}
    nodules = pd.read_csv(out / "nodules.csv")
    ok = cases[cases["status"] == "ok"]
    assert len(nodules) == sum(int(n) for n in ok["n_nodules"])
    for column in ("case_id", "name", "label", "ijk_z0", "ijk_x1", "box_lps_mm_min_x",
                   "box_lps_mm_max_z", "centroid_lps_mm_x", "volume_mm3", "long_axis_mm",
                   "short_axis_mm", "mean_diameter_mm", "mean_hu", "score", "type", "lung_rads",
                   "fleischner"):
        assert column in nodules.columns, column
    for _, row in ok.iterrows():
        report = json.loads(Path(row["report"]).read_text())
        mine = nodules[nodules["case_id"] == row["case_id"]]
        assert list(mine["name"]) == [n["name"] for n in report["nodules"]]
        assert np.allclose(mine["volume_mm3"], [n["volume_mm3"] for n in report["nodules"]])
        assert list(mine["ijk_z0"]) == [n["ijk"][0] for n in report["nodules"]]
    if (out / "cases.parquet").exists():
        assert list(pd.read_parquet(out / "cases.parquet")["case_id"]) == list(cases["case_id"])


@pytest.mark.skipif(not __import__("importlib").util.find_spec("pyarrow"),
                    reason="pyarrow is not installed: Parquet tables are written only with it")
def test_parquet_tables(tmp_path):
    rows = [{"case_id": "x", "path": "p", "status": "error", "error": "bad", "seconds": 0.1}]
    written = batch.write_tables(tmp_path, rows)
    assert "cases_parquet" in written


def test_default_workers_leave_each_a_whole_ct_of_memory():
    """One worker peaked at 5.2 GB on LIDC-IDRI-0314 (BENCHMARKS.md): the default gives each
    worker 6 GB of Ray's memory, and never fewer than one worker or more than the CPUs."""
    gb = 1024 ** 3
    assert batch.WORKER_MEMORY_BYTES >= 5.2 * gb
    assert batch.default_workers({"CPU": 16, "memory": 16.8 * gb}) == 2
    assert batch.default_workers({"CPU": 2, "memory": 64 * gb}) == 2
    assert batch.default_workers({"CPU": 8, "memory": 2 * gb}) == 1


def test_user_errors_before_any_worker(cohort, tmp_path, capsys):
    """A typo fails at once with one line, before Ray or a model is started."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'nodulesam[batch]')")
    out = tmp_path / "out"
    for options, message in ((["--detector", "no-such-detector"], "no-such-detector"),
                             (["--workers", "0"], "--workers 0: must be 1 or more"),
                             (["--folds", "x"], "not a fold number")):
        assert main(["batch", str(cohort), "--out", str(out), *options]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["batch", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["batch", str(cohort), "--out", str(tmp_path / "file")]) == 2
    assert "--out takes a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# On Ray

@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A small local Ray (2 CPUs, no dashboard, 100 MB object store) whose workers inherit the
    crash hook: the first case of the batch kills its worker's process once. It declares one
    GPU (a logical resource: this machine has none), so that the batch's GPU accounting runs."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'nodulesam[batch]')")
    marker = tmp_path_factory.mktemp("hook") / "crashed"
    os.environ[batch.CRASH_HOOK] = str(marker)
    try:
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False,
                 object_store_memory=100 * 1024 ** 2, log_to_driver=False)
    finally:
        del os.environ[batch.CRASH_HOOK]  # the workers were started with it; this process is not
    yield marker
    ray.shutdown()


@pytest.fixture(scope="module")
def first_batch(local_ray, cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "out"
    code = main(["batch", str(cohort), "--out", str(out), "--workers", "2", "--no-refine"])
    assert code == 0
    return out, json.loads((out / "batch.json").read_text())


def test_batch_two_results_one_error_row_outputs_as_segment(first_batch, cohort, tmp_path):
    out, summary = first_batch
    rows = {r["case_id"]: r for r in summary["cases"]}
    assert sorted(rows) == ["broken", "crop_a", "more_crop_b"]
    assert summary["n_ok"] == 2 and summary["n_error"] == 1 and summary["n_resumed"] == 0
    assert "cannot read the image" in rows["broken"]["error"]
    assert len(summary["workers"]) == 2 and all(w["peak_rss_mb"] > 100 for w in summary["workers"])
    for case_id, ct in (("crop_a", cohort / "crop_a.nrrd"), ("more_crop_b", cohort / "more" /
                                                            "crop_b.nrrd")):
        assert rows[case_id]["status"] == "ok" and rows[case_id]["n_nodules"] >= 1
        paths = batch.case_paths(out, case_id)
        got = read_outputs(paths["segmentation"], paths["report"])
        expected = segment_outputs(ct, tmp_path, "--no-refine")
        np.testing.assert_array_equal(got[0], expected[0])
        assert got[1] == expected[1] and got[2] == expected[2]
    assert not list(out.rglob("*.partial*"))
    log = (out / "batch.log").read_text()
    assert "broken: error" in log and "crop_a: ok" in log and "finished: 2 ok, 1 error" in log


def test_killed_worker_is_restarted_and_its_case_retried(first_batch, local_ray):
    """The hook ended one worker's process (os._exit) on its first case: Ray restarted it and the
    case was run again, once, with the same outcome as the others."""
    out, summary = first_batch
    assert local_ray.exists()
    retried = [r for r in summary["cases"] if r["attempts"] == 2]
    assert len(retried) == 1, summary["cases"]
    assert all(r["attempts"] == 1 for r in summary["cases"] if r is not retried[0])
    assert retried[0]["status"] in ("ok", "error") and "died" not in retried[0]["error"]
    assert "after its first worker died" in (out / "batch.log").read_text()
    assert not list((out / "cases").glob("*.attempt"))


def test_workers_share_a_gpu_by_ray_fractions(first_batch):
    """With one GPU in the cluster and 2 workers, each actor is given half of it by Ray's
    accounting (and one CPU). Only the accounting is tested: without CUDA, torch runs on the CPU,
    which each worker reports as its device."""
    import torch

    _, summary = first_batch
    assert len(summary["workers"]) == 2
    for worker in summary["workers"]:
        assert worker["resources"].get("GPU") == pytest.approx(0.5), worker
        assert worker["resources"].get("CPU") == pytest.approx(1.0), worker
        assert worker["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_csv_tables_have_documented_columns(first_batch):
    out, summary = first_batch
    check_tables(out, summary["cases"])
    with open(out / "cases.csv") as f:
        header = next(csv.reader(f))
    assert set(REQUIRED_CASE_COLUMNS) <= set(header)


def test_rerun_skips_finished_cases(first_batch, cohort):
    out, summary = first_batch
    before = {p: p.stat().st_mtime_ns for p in (out / "cases").glob("*.seg.nrrd")}
    assert main(["batch", str(cohort), "--out", str(out), "--no-refine"]) == 0
    again = json.loads((out / "batch.json").read_text())
    rows = {r["case_id"]: r for r in again["cases"]}
    assert again["n_resumed"] == 2 and rows["crop_a"]["resumed"] and rows["more_crop_b"]["resumed"]
    assert rows["broken"]["status"] == "error" and not rows["broken"]["resumed"]  # tried again
    assert {p: p.stat().st_mtime_ns for p in (out / "cases").glob("*.seg.nrrd")} == before
    assert [r["n_nodules"] for r in again["cases"]] == [r["n_nodules"] for r in summary["cases"]]
    # other settings are another run: nothing is skipped
    cases = batch.cases_from_inputs(cohort, out)
    keys = {c.case_id: batch.done_key(batch.input_sha256(c), DEFAULTS.with_candidates(
        sensitivity="specific"), True) for c in cases}
    assert all(batch.finished_row(out, c, keys[c.case_id]) is None for c in cases)


@pytest.mark.slow
def test_refined_batch_identical_to_segment(local_ray, cohort, tmp_path):
    """With refinement (the default bundled refiner, litemedsam-nodule), one worker: the same masks and report as
    ``segment`` (about 2-4 minutes on 2 busy cores)."""
    (tmp_path / "m.csv").write_text(f"case_id,path\nA,{cohort / 'crop_a.nrrd'}\n")
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "m.csv"), "--out", str(out), "--workers", "1"]) == 0
    paths = batch.case_paths(out, "A")
    got = read_outputs(paths["segmentation"], paths["report"])
    expected = segment_outputs(cohort / "crop_a.nrrd", tmp_path)
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1] == expected[1] and got[2] == expected[2]
    assert got[2]["models"]["refiner"] == "litemedsam-nodule" and got[2]["nodules"]
