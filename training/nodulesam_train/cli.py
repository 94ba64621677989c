"""``nodulesam-train``: the headless training package's command line.

Subcommands are contributed by modules: each module listed in :data:`SUBCOMMAND_MODULES` exposes
``add_parser(subparsers)``, which adds its subcommand(s) and sets ``func`` (called with the parsed
``args``, returning an exit code) through ``set_defaults``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# modules (relative to this package) that contribute subcommands via add_parser(subparsers)
SUBCOMMAND_MODULES: list[str] = [
    "nodulesam_train.cli",  # export-nnunet, train, train-detector, train-voi (below)
    "nodulesam_train.lidc",  # prepare voi / prepare dicom
    "nodulesam_train.kappa",  # stats kappa
    "nodulesam_train.evaluate",
    "nodulesam_train.detection_eval",  # evaluate-detection
    "nodulesam_train.train_fpr",  # train-fpr
    "nodulesam_train.baseline_yolo",  # baseline-yolo
    "nodulesam_train.report",  # report
    "nodulesam_train.finetune_refiner",  # finetune-refiner
    "nodulesam_train.classify",  # classify
]


# --------------------------------------------------------------------------------------------
# nnU-Net subcommands (this module)
# --------------------------------------------------------------------------------------------
def _cmd_export(args) -> int:
    from . import nnunet
    from .detector_data import DetectorDataConfig, iter_detector_slices, voi_central_slices

    nnunet.set_nnunet_env(args.work_dir)
    if args.source == "detector":
        slices = iter_detector_slices(args.lidc_dir, DetectorDataConfig(seed=args.seed))
    else:
        slices = voi_central_slices(args.lidc_dir, split=args.split, limit=args.limit, seed=args.seed)
    folder = nnunet.export_dataset(slices, args.work_dir, args.dataset_id, args.dataset_name, overwrite=args.overwrite)
    if args.verify:
        nnunet.verify_export(args.dataset_id)
    print(folder)
    return 0


def _cmd_train(args) -> int:
    from . import nnunet

    nnunet.set_nnunet_env(args.work_dir)
    pre = Path(nnunet.os.environ["nnUNet_preprocessed"])
    dsn = nnunet._find_dataset_name(args.dataset_id)
    if not (pre / dsn / "nnUNetPlans.json").exists():
        nnunet.plan_and_preprocess(args.dataset_id)
    compact = nnunet.CompactPlan(plans_name=args.plans_name,
                                 features=tuple(int(v) for v in args.features.split(",")),
                                 patch_size=(args.patch, args.patch), spacing=(args.spacing, args.spacing),
                                 batch_size=args.batch_size)
    if args.replan or not (pre / dsn / f"{compact.plans_name}.json").exists():
        nnunet.make_compact_plan(args.dataset_id, compact)
        nnunet.preprocess_plan(args.dataset_id, compact.plans_name)
    if not (pre / dsn / "splits_final.json").exists():
        nnunet.write_split(args.dataset_id, val_fraction=args.val_fraction, seed=args.seed)
    results = nnunet.train(args.dataset_id, compact.plans_name, args.epochs, args.iterations, args.val_iterations,
                           device=args.device, resume=not args.restart)
    print("pseudo dice:", nnunet.last_pseudo_dice(results))
    if args.package:
        print(nnunet.package_model(results, args.package))
    return 0


def _cmd_package(args) -> int:
    from . import nnunet

    print(nnunet.package_model(args.results_folder, args.dest))
    return 0


def _cmd_train_detector(args) -> int:
    from . import train_detector

    train_detector.run(args, voi=False)
    return 0


def _cmd_train_voi(args) -> int:
    from . import train_detector

    train_detector.run(args, voi=True)
    return 0


def add_parser(subparsers) -> None:
    from .train_detector import add_arguments

    p = subparsers.add_parser("export-nnunet", help="export 2D slices as an nnU-Net v2 raw dataset")
    p.add_argument("--source", choices=("detector", "voi-central"), default="detector",
                   help="detector: full-slice detector set; voi-central: central slice of each VOI")
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--dataset-id", type=int, default=501)
    p.add_argument("--dataset-name", default="NoduleDetector")
    p.add_argument("--lidc-dir", type=Path, default=None)
    p.add_argument("--split", default="train", help="VOI split for --source voi-central")
    p.add_argument("--limit", type=int, default=None, help="at most this many VOI cases (seeded choice)")
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--verify", action="store_true", help="run nnU-Net's verify_dataset_integrity")
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser("train", help="plan (compact 2d plan), preprocess, train and optionally package")
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--dataset-id", type=int, default=501)
    p.add_argument("--plans-name", default="nnUNetPlans_compact")
    p.add_argument("--features", default="8,16,32,64,128,128")
    p.add_argument("--patch", type=int, default=288)
    p.add_argument("--spacing", type=float, default=1.3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--replan", action="store_true", help="rewrite and re-preprocess the compact plan")
    p.add_argument("--epochs", type=int, default=200,
                   help="epochs (default: the research design's %(default)s; the bundled models "
                        "used fewer to fit a 2-core CPU, see their model cards)")
    p.add_argument("--iterations", type=int, default=250,
                   help="iterations per epoch (default: nnU-Net's %(default)s)")
    p.add_argument("--val-iterations", type=int, default=10)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--restart", action="store_true", help="do not resume from checkpoint_latest.pth")
    p.add_argument("--package", type=Path, default=None, help="package the trained model into this folder")
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser("package-nnunet", help="package an nnU-Net results folder (float16, weights_only)")
    p.add_argument("results_folder", type=Path, help="folder holding plans.json, dataset.json, fold_0/")
    p.add_argument("dest", type=Path)
    p.set_defaults(func=_cmd_package)

    p = subparsers.add_parser("train-detector", help="build data, train and package the bundled nodule-detector")
    add_arguments(p, voi=False)
    p.set_defaults(func=_cmd_train_detector)

    p = subparsers.add_parser("train-voi", help="train and package the nodule-voi model (central VOI slices)")
    add_arguments(p, voi=True)
    p.set_defaults(func=_cmd_train_voi)


# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodulesam-train", description="NoduleSAM headless training and experiments")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        if name == __name__ or name == "nodulesam_train.cli":
            add_parser(subparsers)
            continue
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from NoduleSAMLib.errors import NoduleSAMError

    try:
        return int(args.func(args) or 0)
    except NoduleSAMError as err:
        print(f"nodulesam-train: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
