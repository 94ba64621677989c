"""``nodulesam batch``: a cohort of CTs on Ray, resumable, one row per case.

The Ray-free parts come first and are tested without Ray: finding the cases (``find_cases``,
``read_manifest``), the content hash and the resume key (``input_sha256``, ``done_key``), one
case's work on a loaded pipeline (``segment_case``, the same outputs.py functions as
``nodulesam segment``) and the cohort tables (``nodule_rows``, ``write_tables``). ``run_batch``
drives Ray: one ``CaseWorker`` actor per worker loads the models once and segments case after
case; a case whose worker process dies is retried once on the restarted worker.

Layout of ``--out DIR``::

    DIR/cases/<case_id>.seg.nrrd   the segmentation, as ``segment -o`` writes it
    DIR/cases/<case_id>.json       the JSON report, as ``segment --report`` writes it
    DIR/cases/<case_id>.html       the HTML report beside it, as ``segment`` writes it (unless
                                   ``--no-html``); ``<case_id>.pdf`` with ``--pdf``
    DIR/cases/<case_id>.seg.dcm    with ``--dicom``, for a case read from a DICOM series: the
    DIR/cases/<case_id>.sr.dcm     DICOM SEG and the TID 1500 SR (``segment --dicom-seg/-sr``)
    DIR/cases/<case_id>.done.json  written last: input hash, settings, resume key, timings
    DIR/cases.csv, DIR/nodules.csv (and .parquet where pyarrow is installed)
    DIR/batch.json, DIR/batch.log

Test hook: where the environment variable ``NODULESAM_BATCH_CRASH_ONCE`` names a file that does
not exist yet, the first worker to start a case creates it and ends its own process with
``os._exit`` (a real worker death, as an out-of-memory kill would be), once per batch; the tests
use it to check the restart and retry.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import NoduleSAMError
from .volume import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

CRASH_HOOK = "NODULESAM_BATCH_CRASH_ONCE"
CASE_COLUMNS = ["case_id", "path", "series_uid", "date", "status", "error", "n_nodules", "seconds",
                "attempts", "resumed", "lung_rads", "segmentation", "report", "html", "pdf",
                "dicom_seg", "dicom_sr", "input_sha256"]
# The per-case outputs beyond the segmentation and the JSON report (``segment_case``'s ``extras``).
EXTRA_OUTPUTS = ("html", "pdf", "dicom")
DEFAULT_EXTRAS = ("html",)
MANIFEST_COLUMNS = ("case_id", "path", "series_uid", "date")
WORKER_MEMORY_BYTES = 6 * 1024 ** 3  # one worker peaked at 5.2 GB on a 1 mm whole CT (BENCHMARKS.md)


@dataclass
class Case:
    """One CT of the cohort. path: a DICOM series folder or an image file; series_uid: which
    series of the folder (None: its only one); date: the study date as given in a manifest."""

    case_id: str
    path: str
    series_uid: str | None = None
    date: str | None = None


# ---------------------------------------------------------------------------------------------
# Finding the cases

def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(IMAGE_SUFFIXES) and not name.endswith(".seg.nrrd")


def _dicom_series_uid(path: Path) -> str | None:
    """The SeriesInstanceUID of an image slice, or None for anything that is not one."""
    import pydicom

    try:
        with open(path, "rb") as f:
            head = f.read(132)
        if head[128:132] != b"DICM" and path.suffix.lower() != ".dcm":
            return None
        header = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["SeriesInstanceUID", "Rows"])
    except Exception:  # pydicom raises many types for files that are not DICOM
        return None
    if "Rows" not in header:  # a report, a structure set: not an image
        return None
    return str(header.get("SeriesInstanceUID", "?"))


def find_cases(root: str | Path, skip: Path | None = None) -> list[Case]:
    """The cases under a folder, found recursively: each image file is one; each folder holding
    DICOM slices gives one case per series in it (the series UID is kept when there are several).

    skip: a folder not to look into (the batch's own output folder).
    """
    root = Path(root)
    if not root.is_dir():
        raise NoduleSAMError(f"{root}: not a folder; give a folder of CTs or a CSV manifest")
    skip = skip.resolve() if skip is not None else None
    cases, series = [], {}
    for folder, subfolders, files in os.walk(root):
        folder = Path(folder)
        if skip is not None and folder.resolve() == skip:
            subfolders[:] = []
            continue
        subfolders.sort()
        for name in sorted(files):
            path = folder / name
            if _is_image(path):
                relative = path.relative_to(root).as_posix()
                for suffix in IMAGE_SUFFIXES:
                    if relative.lower().endswith(suffix):
                        relative = relative[:-len(suffix)]
                        break
                cases.append(Case(_safe_id(relative), str(path)))
            else:
                uid = _dicom_series_uid(path)
                if uid is not None:
                    series.setdefault(folder, {}).setdefault(uid, 0)
    for folder, uids in series.items():
        relative = folder.relative_to(root).as_posix() if folder != root else root.name
        for uid in sorted(uids):
            case_id = _safe_id(relative) + (f"_{uid[-12:]}" if len(uids) > 1 else "")
            cases.append(Case(case_id, str(folder), uid if len(uids) > 1 else None))
    cases.sort(key=lambda c: c.case_id)
    _check_unique(cases, str(root))
    if not cases:
        raise NoduleSAMError(f"{root}: holds no CT (no DICOM series and no "
                             f"{', '.join(IMAGE_SUFFIXES)} file)")
    return cases


def read_manifest(path: str | Path) -> list[Case]:
    """A CSV manifest with the columns ``case_id``, ``path`` and optionally ``series_uid`` and
    ``date``; relative paths are taken from the manifest's folder."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise NoduleSAMError(f"{path}: cannot read the manifest ({err})") from None
    missing = [c for c in ("case_id", "path") if c not in header]
    if missing:
        raise NoduleSAMError(f"{path}: the manifest has no {' and no '.join(missing)} column; it "
                             f"needs a header row with {', '.join(MANIFEST_COLUMNS)} (the last two "
                             "optional)")
    cases = []
    for line, row in enumerate(rows, start=2):
        case_id, where = (row.get("case_id") or "").strip(), (row.get("path") or "").strip()
        if not case_id or not where:
            raise NoduleSAMError(f"{path}: line {line} has no case_id or no path")
        if _safe_id(case_id) != case_id:
            raise NoduleSAMError(f"{path}: line {line}: case_id '{case_id}' may hold only letters, "
                                 "digits, '.', '_' and '-' (it names the output files)")
        where_path = Path(where) if Path(where).is_absolute() else path.parent / where
        cases.append(Case(case_id, str(where_path), (row.get("series_uid") or "").strip() or None,
                          (row.get("date") or "").strip() or None))
    if not cases:
        raise NoduleSAMError(f"{path}: the manifest lists no case")
    _check_unique(cases, str(path))
    return cases


def _check_unique(cases: list[Case], where: str) -> None:
    seen = set()
    for case in cases:
        if case.case_id in seen:
            raise NoduleSAMError(f"{where}: case_id '{case.case_id}' is given twice; each case "
                                 "needs its own")
        seen.add(case.case_id)


def cases_from_inputs(inputs: str | Path, out_dir: Path | None = None) -> list[Case]:
    """INPUTS of ``nodulesam batch``: a CSV manifest or a folder of CTs."""
    inputs = Path(inputs)
    if inputs.is_file() and inputs.suffix.lower() == ".csv":
        return read_manifest(inputs)
    if not inputs.exists():
        raise NoduleSAMError(f"{inputs}: no such file or folder")
    return find_cases(inputs, skip=out_dir)


# ---------------------------------------------------------------------------------------------
# Resume: what a case's input and settings were

def input_sha256(case: Case) -> str:
    """SHA-256 of what ``read_ct`` reads: the file, or every file under the DICOM folder (names
    relative to it and contents, in order) and the chosen series."""
    digest = hashlib.sha256()
    path = Path(case.path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise NoduleSAMError(f"{path}: no such file or folder")
    for file in files:
        digest.update((file.relative_to(path).as_posix() if file != path else "").encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    digest.update(f"\0series={case.series_uid}".encode())
    return digest.hexdigest()


def done_key(content_sha256: str, settings, no_refine: bool) -> str:
    """The resume key: a case is done when its marker holds this key (same input, same settings)."""
    text = json.dumps({"input": content_sha256, "settings": settings.key(),
                       "no_refine": bool(no_refine)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def check_extras(extras) -> tuple[str, ...]:
    unknown = sorted(set(extras) - set(EXTRA_OUTPUTS))
    if unknown:
        raise NoduleSAMError(f"unknown batch output(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(EXTRA_OUTPUTS)}")
    return tuple(e for e in EXTRA_OUTPUTS if e in extras)


def case_paths(out_dir: Path, case_id: str) -> dict[str, Path]:
    folder = Path(out_dir) / "cases"
    return {"segmentation": folder / f"{case_id}.seg.nrrd", "report": folder / f"{case_id}.json",
            "html": folder / f"{case_id}.html", "pdf": folder / f"{case_id}.pdf",
            "dicom_seg": folder / f"{case_id}.seg.dcm", "dicom_sr": folder / f"{case_id}.sr.dcm",
            "done": folder / f"{case_id}.done.json"}


def finished_row(out_dir: Path, case: Case, key: str,
                 extras: tuple[str, ...] = DEFAULT_EXTRAS) -> dict | None:
    """The row of a case finished before with this key and whose outputs are all there (the
    ones ``extras`` asks for included, so that a rerun with ``--pdf`` adds the PDFs), else None."""
    paths = case_paths(out_dir, case.case_id)
    try:
        done = json.loads(paths["done"].read_text())
    except (OSError, ValueError):
        return None
    if done.get("key") != key or not (paths["segmentation"].is_file() and paths["report"].is_file()):
        return None
    row = done["row"]
    # A DICOM output is "there" when it was written, or when the case is not a DICOM series
    # (the row says so in its messages and leaves the column empty).
    wanted = [name for name in ("html", "pdf") if name in extras]
    if "dicom" in extras:
        if "dicom_possible" not in done:  # a marker from before batch wrote DICOM
            return None
        wanted += ["dicom_seg", "dicom_sr"] if done["dicom_possible"] else []
    if not all(row.get(name) and Path(row[name]).is_file() for name in wanted):
        return None
    return row | {"resumed": True, "attempts": 0}


def _write_json_atomic(data, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, default=str))
    os.replace(partial, path)


# ---------------------------------------------------------------------------------------------
# One case on a loaded pipeline (what a worker does)

def report_extra(settings, pipeline, no_refine: bool) -> dict:
    """The report's ``models``, ``settings`` and ``applied``, as ``cli.run_segment`` writes them
    for a run that detects (batch has no per-case boxes)."""
    return {"models": {"detector": str(settings.detector),
                       "fpr": None if settings.fpr == "none" else str(settings.fpr),
                       "refiner": None if no_refine else settings.refiner,
                       "refiner_checkpoint": settings.checkpoint},
            "settings": settings.to_dict(),
            "applied": {"sensitivity": None if settings.fpr == "none"
                        else settings.candidates.sensitivity,
                        "fpr_threshold": pipeline.fpr_threshold if pipeline.fpr is not None else None,
                        "blob_candidates": pipeline.settings.blobs and pipeline.fpr is not None,
                        "encoder": pipeline.refiner.encoder_name if pipeline.refiner else None}}


def one_line(err: BaseException) -> str:
    """An exception as the one line of an error row."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, NoduleSAMError) else f"{type(err).__name__}: {text}"


def write_extras(result, report: dict, paths: dict[str, Path], extras: tuple[str, ...],
                 messages: list[str]) -> dict[str, str]:
    """The HTML, PDF and DICOM outputs ``extras`` asks for, each written atomically by the same
    functions as ``segment``'s; returns the columns of those written. A case not read from a
    DICOM series gets no DICOM output, and a line in ``messages`` says so."""
    written = {}
    if "html" in extras:
        from .html_report import write_html_report

        written["html"] = str(write_html_report(result, report, paths["html"]))
    if "pdf" in extras:
        from .html_report import write_pdf_report

        written["pdf"] = str(write_pdf_report(result, report, paths["pdf"]))
    if "dicom" in extras:
        if not Path(result.volume.source).is_dir():
            messages.append("no DICOM SEG/SR: the CT was not read from a DICOM series")
        else:
            from .dicom_export import source_slices, write_dicom_seg, write_dicom_sr

            slices = source_slices(result)
            written["dicom_seg"] = str(write_dicom_seg(result, paths["dicom_seg"], slices))
            written["dicom_sr"] = str(write_dicom_sr(result, paths["dicom_sr"], paths["dicom_seg"],
                                                     slices))
    return written


def segment_case(pipeline, settings, no_refine: bool, case: Case, out_dir: Path,
                 key: str, content_sha256: str, extras: tuple[str, ...] = DEFAULT_EXTRAS) -> dict:
    """Segment one case with a loaded pipeline, write its outputs (each atomically, the done
    marker last) and return its row; a failure becomes an error row with its one-line message."""
    from .outputs import report_dict, write_report, write_seg_nrrd
    from .pipeline import timed_stage
    from .volume import read_ct

    start = time.perf_counter()
    paths = case_paths(out_dir, case.case_id)
    row = asdict(case) | {"status": "ok", "error": "", "n_nodules": None, "lung_rads": None,
                          "segmentation": "", "report": "", "input_sha256": content_sha256}
    try:
        timings = {}
        with timed_stage(timings, "read_s"):
            volume = read_ct(case.path, case.series_uid)
        result = pipeline.run(volume)
        messages = result.messages + volume.warnings
        write_seg_nrrd(result, paths["segmentation"])
        report = report_dict(result, report_extra(settings, pipeline, no_refine))
        write_report(report, paths["report"])
        with timed_stage(timings, "outputs_s"):
            written = write_extras(result, report, paths, extras, messages)
        result.timings_s = timings | result.timings_s
    except Exception as err:  # per-case isolation: any failure is this case's error row
        return row | {"status": "error", "error": one_line(err),
                      "seconds": round(time.perf_counter() - start, 3)}
    row |= {"n_nodules": len(report["nodules"]), "lung_rads": report["exam"]["lung_rads"],
            "segmentation": str(paths["segmentation"]), "report": str(paths["report"]),
            **written, "seconds": round(time.perf_counter() - start, 3),
            "timings_s": result.timings_s, "messages": messages}
    _write_json_atomic({"key": key, "settings": settings.to_dict(), "no_refine": no_refine,
                        "dicom_possible": Path(volume.source).is_dir(), "row": row},
                       paths["done"])
    return row


# ---------------------------------------------------------------------------------------------
# Cohort tables

def _flatten(name: str, value) -> dict:
    """A report field as flat columns: ``ijk`` -> ``ijk_z0..ijk_x1``, a point ``..._mm`` ->
    ``_x, _y, _z``, a box ``box_..._mm`` -> ``_min_x .. _max_z``, other lists -> ``_0, _1, ..``."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(f"{name}_{key}", item).items()}
    if not isinstance(value, (list, tuple)):
        return {name: value}
    if name == "ijk" and len(value) == 6:
        return dict(zip([f"ijk_{a}" for a in ("z0", "z1", "y0", "y1", "x0", "x1")], value))
    if name.endswith("ijk") and len(value) == 3:
        return dict(zip([f"{name}_{a}" for a in "zyx"], value))
    if name.endswith("_mm") and len(value) == 3 and not isinstance(value[0], (list, tuple)):
        return dict(zip([f"{name}_{a}" for a in "xyz"], value))
    if name.endswith("_mm") and len(value) == 2 and all(isinstance(v, (list, tuple)) for v in value):
        return {f"{name}_{end}_{a}": v for end, corner in zip(("min", "max"), value)
                for a, v in zip("xyz", corner)}
    return {k: v for i, item in enumerate(value) for k, v in _flatten(f"{name}_{i}", item).items()}


def nodule_rows(case_id: str, report: dict) -> list[dict]:
    """One row per nodule of a report: ``case_id``, then its fields flattened (``_flatten``)."""
    rows = []
    for record in report["nodules"]:
        row = {"case_id": case_id}
        for name, value in record.items():
            row |= _flatten(name, value)
        rows.append(row)
    return rows


def _write_csv(rows: list[dict], columns: list[str], path: Path) -> None:
    for row in rows:
        columns += [c for c in row if c not in columns]
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    os.replace(partial, path)


def _write_parquet(rows: list[dict], columns: list[str], path: Path) -> bool:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    os.replace(partial, path)
    return True


def write_tables(out_dir: Path, rows: list[dict]) -> dict[str, Path]:
    """``cases.csv`` (``CASE_COLUMNS``) and ``nodules.csv`` (one row per nodule of each finished
    case, read back from its report), and the same as Parquet where pyarrow is installed."""
    out_dir = Path(out_dir)
    nodules = []
    for row in rows:
        if row["status"] == "ok":
            report = json.loads(Path(row["report"]).read_text())
            nodules += nodule_rows(row["case_id"], report)
    case_rows = [{c: row.get(c) for c in CASE_COLUMNS} for row in rows]
    nodule_columns = ["case_id"]
    _write_csv(nodules, nodule_columns, out_dir / "nodules.csv")
    _write_csv(case_rows, list(CASE_COLUMNS), out_dir / "cases.csv")
    written = {"cases": out_dir / "cases.csv", "nodules": out_dir / "nodules.csv"}
    if _write_parquet(case_rows, CASE_COLUMNS, out_dir / "cases.parquet"):
        _write_parquet(nodules, nodule_columns, out_dir / "nodules.parquet")
        written |= {"cases_parquet": out_dir / "cases.parquet",
                    "nodules_parquet": out_dir / "nodules.parquet"}
    return written


# ---------------------------------------------------------------------------------------------
# Ray

def _crash_once_hook() -> None:
    """The test hook (module docstring): the first case of a batch ends its worker's process."""
    marker = os.environ.get(CRASH_HOOK)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(17)


class CaseWorker:
    """One worker: loads the models once (``cli.build_pipeline``), then segments case after case.
    Ray makes it an actor (``ray.remote(CaseWorker)``); it also runs without Ray."""

    def __init__(self, settings_dict: dict, no_refine: bool, threads: int | None = None,
                 extras: tuple[str, ...] = DEFAULT_EXTRAS):
        import torch

        from .cli import build_pipeline
        from .settings import Settings

        if threads:
            torch.set_num_threads(threads)
        self.settings = Settings.from_dict(settings_dict)
        self.no_refine = no_refine
        self.extras = tuple(extras)
        start = time.perf_counter()
        self.pipeline = build_pipeline(self.settings, need_detector=True, refine=not no_refine)
        if self.pipeline.detector is not None:
            self.pipeline.detector.predictor.allow_tqdm = False
        self.load_s = time.perf_counter() - start

    def info(self) -> dict:
        import resource

        from .cli import resolve_device

        info = {"pid": os.getpid(), "load_models_s": round(self.load_s, 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "device": resolve_device(self.settings.device)}
        try:  # what Ray gave this worker (CPU and GPU fractions), when it runs as an actor
            import ray

            if ray.is_initialized():
                info["resources"] = ray.get_runtime_context().get_assigned_resources()
        except ImportError:
            pass
        return info

    def run(self, case_dict: dict, out_dir: str, key: str, content_sha256: str,
            run_id: str = "") -> dict:
        """Segment one case; ``attempts`` counts the tries of this batch run (``run_id``): Ray
        runs the call again on the restarted worker when a worker process dies, and the marker
        file left by the first try tells the second it is one."""
        case = Case(**case_dict)
        marker = case_paths(Path(out_dir), case.case_id)["done"].with_suffix(".attempt")
        marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            tried = marker.read_text().split("\n") if marker.exists() else []
        except OSError:
            tried = []
        attempts = sum(line == run_id for line in tried) + 1
        with open(marker, "a") as f:
            f.write(run_id + "\n")
        _crash_once_hook()
        row = segment_case(self.pipeline, self.settings, self.no_refine, case, Path(out_dir), key,
                           content_sha256, self.extras)
        marker.unlink(missing_ok=True)
        return row | {"worker_pid": os.getpid(), "attempts": attempts}


def _check_models(settings) -> None:
    """The models are found before any worker starts, so a typo is one error, not a row per case."""
    from . import models

    models.detector_folder(settings.detector)
    if settings.fpr != "none":
        models.fpr_folder(settings.fpr)


def default_workers(resources: dict) -> int:
    """As many workers as there are CPUs, but no more than the memory holds (``WORKER_MEMORY_BYTES``
    each); ``resources`` is ``ray.cluster_resources()``."""
    cpus = int(resources.get("CPU", 1))
    by_memory = int(resources.get("memory", WORKER_MEMORY_BYTES) // WORKER_MEMORY_BYTES)
    return max(1, min(cpus, by_memory))


def start_ray(address: str | None, num_cpus: int | None = None,
              object_store_mb: int = 256) -> bool:
    """A local Ray sized for this machine (no dashboard, a small object store: only rows travel),
    or a connection to the cluster at ``address``. False where Ray was running already."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 object_store_memory=object_store_mb * 1024 ** 2, log_to_driver=False)
    return True


def run_batch(cases: list[Case], out_dir: str | Path, settings, no_refine: bool = False,
              workers: int | None = None, address: str | None = None, num_cpus: int | None = None,
              progress: bool = True, extras=DEFAULT_EXTRAS) -> dict:
    """Segment every case not done before on Ray actors; write the cohort tables, batch.json
    and batch.log; return batch.json's content. ``num_cpus``: the local Ray's CPUs (default all);
    ``extras``: the per-case outputs beyond segmentation and JSON (``EXTRA_OUTPUTS``)."""
    import ray
    from tqdm import tqdm

    _check_models(settings)
    extras = check_extras(extras)
    out_dir = Path(out_dir)
    (out_dir / "cases").mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("nodulesam.batch")
    handler = logging.FileHandler(out_dir / "batch.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the log goes to batch.log; the terminal shows the bar
    started, clock = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    rows: dict[str, dict] = {}
    ray_started = False
    try:
        logger.info(f"batch of {len(cases)} case(s) -> {out_dir}")
        todo = []
        for case in cases:
            try:
                content = input_sha256(case)
            except (NoduleSAMError, OSError) as err:
                rows[case.case_id] = asdict(case) | {"status": "error", "error": one_line(err),
                                                     "seconds": 0.0, "attempts": 0}
                logger.info(f"{case.case_id}: error: {rows[case.case_id]['error']}")
                continue
            key = done_key(content, settings, no_refine)
            row = finished_row(out_dir, case, key, extras)
            if row is not None:
                rows[case.case_id] = row
                logger.info(f"{case.case_id}: done before, skipped")
            else:
                todo.append((case, key, content))
        worker_info = []
        if todo:
            ray_started = start_ray(address, num_cpus)
            resources = ray.cluster_resources()
            count = min(workers or default_workers(resources), len(todo))
            cpus = resources.get("CPU", 1)
            threads = max(1, int(cpus) // count)
            gpus = resources.get("GPU", 0)
            # A dead worker process is restarted (loading its models again) and the case it was
            # running is run again once; a case that kills it twice becomes an error row. More
            # workers than CPUs get CPU fractions, so that all of them are placed.
            options = {"num_cpus": min(threads, cpus / count), "max_restarts": -1,
                       "max_task_retries": 1}
            if gpus and settings.device != "cpu":
                options["num_gpus"] = min(1.0, gpus / count)  # workers share a GPU by fractions
            actor = ray.remote(CaseWorker).options(**options)
            pool = [actor.remote(settings.to_dict(), no_refine, threads, extras)
                    for _ in range(count)]
            logger.info(f"{count} worker(s), {threads} CPU thread(s) each"
                        + (f", {options['num_gpus']:.2f} GPU each" if "num_gpus" in options else ""))
            rows |= _dispatch(pool, todo, out_dir, logger,
                              tqdm(total=len(cases), initial=len(cases) - len(todo), unit="case",
                                   desc="batch", disable=not progress, file=sys.stderr))
            for worker in pool:
                try:
                    worker_info.append(ray.get(worker.info.remote()))
                except ray.exceptions.RayError:
                    pass
                ray.kill(worker)
        ordered = [rows[c.case_id] for c in cases]
        for row in ordered:
            row.setdefault("resumed", False)
        tables = write_tables(out_dir, ordered)
        summary = {"started": started, "seconds": round(time.perf_counter() - clock, 3),
                   "n_cases": len(cases),
                   "n_ok": sum(r["status"] == "ok" for r in ordered),
                   "n_error": sum(r["status"] == "error" for r in ordered),
                   "n_resumed": sum(bool(r.get("resumed")) for r in ordered),
                   "settings": settings.to_dict(), "no_refine": no_refine, "outputs": extras,
                   "workers": worker_info, "tables": {k: str(v) for k, v in tables.items()},
                   "cases": ordered}
        _write_json_atomic(summary, out_dir / "batch.json")
        logger.info(f"finished: {summary['n_ok']} ok, {summary['n_error']} error(s), "
                    f"{summary['n_resumed']} done before, {summary['seconds']:.1f} s")
        return summary
    finally:
        logger.removeHandler(handler)
        handler.close()
        if ray_started:
            ray.shutdown()


def _dispatch(pool: list, todo: list, out_dir: Path, logger, bar) -> dict[str, dict]:
    """Keep one case in flight per worker, the next case going to the first worker free."""
    import uuid

    import ray

    run_id = uuid.uuid4().hex
    queue = list(reversed(todo))
    running, rows = {}, {}

    def submit(worker):
        case, key, content = queue.pop()
        running[worker.run.remote(asdict(case), str(out_dir), key, content, run_id)] = (worker, case)

    for worker in pool:
        if queue:
            submit(worker)
    with bar:
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            worker, case = running.pop(ref)
            try:
                row = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                row = asdict(case) | {"status": "error", "attempts": 2, "seconds": None,
                                      "error": "its worker process died twice on this case "
                                               f"(out of memory?): {one_line(err)}"}
            rows[case.case_id] = row
            logger.info(f"{case.case_id}: {row['status']}"
                        + (f", {row['n_nodules']} nodule(s)" if row["status"] == "ok" else
                           f": {row['error']}")
                        + f", {row.get('seconds') or 0:.1f} s"
                        + (f", worker {row['worker_pid']}" if "worker_pid" in row else "")
                        + (", on the restarted worker after its first worker died"
                           if row["attempts"] > 1 else ""))
            bar.update(1)
            if queue:
                submit(worker)
    return rows
