"""Build, train and package the bundled 2D detector ``nodule-detector`` in one command.

    PYTHONPATH=training python -m nodulesam_train.train_detector --work-dir out/detector \
        --dest NoduleSAM/Resources/Models/nodule-detector --budget-min 70

Steps (each skipped when its output exists, so rerunning the command resumes):
1. detector data (:mod:`nodulesam_train.detector_data`) exported as an nnU-Net raw dataset;
2. fingerprint + default plan, then a compact plan (:class:`nnunet.CompactPlan`) preprocessed;
3. a fixed train/val split (``splits_final.json``, seeded);
4. a short timing run (seconds per iteration) that sizes epochs x iterations to ``--budget-min``
   unless ``--epochs`` is given;
5. nnU-Net training (``nnUNetTrainer``; resumes from ``checkpoint_latest.pth``);
6. packaging into ``--dest`` (float16 weights, ``model.json`` with SHA-256).

Progress goes to ``<work-dir>/train_detector.log`` (and stdout).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

DATASET_ID = 501
DATASET_NAME = "NoduleDetector"
VOI_DATASET_ID = 502
VOI_DATASET_NAME = "NoduleVOI"


class RunLog:
    """Timestamped progress lines, printed and appended to a log file."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, *msg):
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] " + " ".join(str(m) for m in msg)
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def add_arguments(p: argparse.ArgumentParser, voi: bool = False) -> argparse.ArgumentParser:
    p.add_argument("--work-dir", type=Path, default=Path("out/nnunet_voi" if voi else "out/nnunet_detector"),
                   help="nnU-Net raw/preprocessed/results live here")
    p.add_argument("--dest", type=Path,
                   default=Path("NoduleSAM/Resources/Models/" + ("nodule-voi" if voi else "nodule-detector")),
                   help="packaged model folder")
    p.add_argument("--lidc-dir", type=Path, default=None, help="shared LIDC data (default: $NODULESAM_LIDC_DIR "
                   "or <repo>/../shared/data/lidc)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--budget-min", type=float, default=70.0,
                   help="wall-clock minutes for training (sizes the epochs when --epochs is not given)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--iterations", type=int, default=None, help="iterations per epoch")
    p.add_argument("--val-iterations", type=int, default=None)
    p.add_argument("--features", type=str, default=None, help="features per stage, e.g. 16,32,64,128,160,160")
    p.add_argument("--patch", type=int, default=None, help="square patch size (px)")
    p.add_argument("--spacing", type=float, default=None, help="in-plane target spacing (mm)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--plans-name", type=str, default=None)
    p.add_argument("--oversample", type=float, default=None,
                   help="nnU-Net oversample_foreground_percent (default 0.33)")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (nnU-Net default 0.01)")
    p.add_argument("--scans", nargs="*", default=None,
                   help="whole CTs whose slices train the detector (default: LIDC-IDRI-0001 and -0003; "
                        "the second model: LIDC-IDRI-0001 LIDC-IDRI-0003 NSCLC-Radiomics-LUNG1-002)")
    p.add_argument("--paste-slices", type=int, default=None, help="slices with pasted VOI nodules (default 360)")
    p.add_argument("--negative-slices", type=int, default=None, help="random lung slices without nodules (default 120)")
    p.add_argument("--hard-negatives-from", default=None,
                   help="a first detector (name or folder): every slice of --scans where it has a false "
                        "positive becomes an extra negative slice (hard-negative mining)")
    p.add_argument("--init-from", default=None,
                   help="start from this detector's weights (name or folder; same plan) instead of random")
    p.add_argument("--cache-dir", type=Path, default=Path("out/detcache"),
                   help="detector outputs for --hard-negatives-from are cached here")
    p.add_argument("--no-package", action="store_true")
    p.add_argument("--prepare-only", action="store_true", help="stop after preprocessing and timing")
    p.add_argument("--evaluate-only", action="store_true",
                   help="only evaluate the packaged model in --dest (detector) and write evaluation.json")
    return p


def _compact_from_args(args, voi: bool):
    from .nnunet import CompactPlan

    if voi:
        c = CompactPlan(plans_name="nnUNetPlans_compact", features=(16, 32, 64, 128, 160), patch_size=(64, 64),
                        spacing=(0.7, 0.7), batch_size=16)
    else:
        c = CompactPlan()
    if args.features:
        c.features = tuple(int(v) for v in args.features.split(","))
    if args.patch:
        c.patch_size = (args.patch, args.patch)
    if args.spacing:
        c.spacing = (args.spacing, args.spacing)
    if args.batch_size:
        c.batch_size = args.batch_size
    if args.plans_name:
        c.plans_name = args.plans_name
    return c


def hard_negative_slices(detector_name: str, scan_names, lidc_dir, cache_dir: Path, log=print) -> dict:
    """Slice indices, per scan, of a detector's false-positive components (touching no label)."""
    import numpy as np
    from scipy import ndimage

    from NoduleSAMLib.boxes import candidates_from_mask
    from NoduleSAMLib.detect import Detector
    from NoduleSAMLib.models import detector_folder

    from .detection_cache import cached_detection
    from .scans import load_scan

    folder = detector_folder(detector_name)
    detector = Detector(folder)
    detector.predictor.allow_tqdm = False
    out = {}
    for name in scan_names:
        scan = load_scan(name, lidc_dir)
        detection = cached_detection(detector, folder, scan.volume, cache_dir)
        near = ndimage.binary_dilation(scan.labels > 0, iterations=3)
        slices, count = set(), 0
        for c in candidates_from_mask(detection.mask, detection.probability, scan.volume.spacing_zyx_mm, 5.0):
            z0, z1, y0, y1, x0, x1 = c.box_ijk
            if near[z0:z1, y0:y1, x0:x1][c.detector_mask].any():
                continue
            count += 1
            slices |= set(int(z) + z0 for z in np.flatnonzero(c.detector_mask.any(axis=(1, 2))))
        out[name] = sorted(slices)
        log(f"hard negatives {name}: {count} false-positive components on {len(slices)} slices")
    return out


def detector_config(args, log=print):
    """The detector's training-set configuration from the command line."""
    from .detector_data import DetectorDataConfig
    from .scans import HELD_OUT_PATIENTS

    cfg = DetectorDataConfig(seed=args.seed, excluded_patients=HELD_OUT_PATIENTS)
    if args.scans:
        cfg.scans = tuple(args.scans)
    if args.paste_slices is not None:
        cfg.n_paste_slices = args.paste_slices
    if args.negative_slices is not None:
        cfg.n_negative_slices = args.negative_slices
    if args.hard_negatives_from:
        cfg.hard_negatives = hard_negative_slices(args.hard_negatives_from, cfg.scans, args.lidc_dir,
                                                  args.cache_dir, log)
    return cfg


def run(args, voi: bool = False) -> Path | None:
    from . import nnunet
    from .detector_data import iter_detector_slices, voi_central_slices

    work = args.work_dir.resolve()
    log = RunLog(work / ("train_voi.log" if voi else "train_detector.log"))
    nnunet.set_nnunet_env(work)
    ds_id, ds_name = (VOI_DATASET_ID, VOI_DATASET_NAME) if voi else (DATASET_ID, DATASET_NAME)
    log(f"=== {'nodule-voi' if voi else 'nodule-detector'}: work dir {work}")
    state_file = work / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}

    def save_state():
        state_file.write_text(json.dumps(state, indent=2))

    # 1. export
    raw = Path(nnunet.os.environ["nnUNet_raw"]) / nnunet.dataset_name(ds_id, ds_name)
    if not (raw / "dataset.json").exists():
        t = time.time()
        if voi:
            slices = voi_central_slices(args.lidc_dir, split="train", seed=args.seed)
        else:
            slices = iter_detector_slices(args.lidc_dir, detector_config(args, log), log=log)
        nnunet.export_dataset(slices, work, ds_id, ds_name, overwrite=True, log=log)
        log(f"export done in {time.time() - t:.0f} s")
    else:
        log("export: exists")
    # 2. plan
    pre = Path(nnunet.os.environ["nnUNet_preprocessed"]) / nnunet.dataset_name(ds_id, ds_name)
    if not (pre / "nnUNetPlans.json").exists():
        nnunet.plan_and_preprocess(ds_id, preprocess_default=False, log=log)
    compact = _compact_from_args(args, voi)
    plans_id = compact.plans_name
    compact_json = json.loads(json.dumps(asdict(compact)))  # tuples -> lists, as stored in state.json
    if state.get("compact") != compact_json or not state.get("preprocessed"):
        nnunet.make_compact_plan(ds_id, compact, log=log)
        nnunet.preprocess_plan(ds_id, plans_id, log=log)
        state.update({"compact": compact_json, "preprocessed": True})
        state.pop("sec_per_it", None)
        save_state()
        log(f"network parameters: {nnunet.network_parameter_count(ds_id, plans_id):,}")
    else:
        log("preprocess: exists")
    # 3. split
    if not (pre / "splits_final.json").exists():
        sp = nnunet.write_split(ds_id, val_fraction=0.1, seed=args.seed)
        log(f"split: {len(sp[0]['train'])} train / {len(sp[0]['val'])} val")
    # 4. timing / schedule
    iters = args.iterations or (100 if not voi else 100)
    val_iters = args.val_iterations or 10
    if args.epochs:
        epochs = args.epochs
    else:
        if "sec_per_it" not in state:
            state["sec_per_it"] = nnunet.time_iterations(ds_id, plans_id, 5, args.device, log=log)
            save_state()
        spi = state["sec_per_it"]
        # validation iterations cost about a third of a training iteration; 5 % slack for logging/checkpoints
        per_epoch = spi * (iters + val_iters / 3) * 1.05 + 3.0
        epochs = max(1, int(args.budget_min * 60 / per_epoch))
        log(f"schedule: {spi:.2f} s/it -> {epochs} epochs x {iters} it (~{epochs * per_epoch / 60:.0f} min)")
    state["schedule"] = {"epochs": epochs, "iterations": iters, "val_iterations": val_iters}
    save_state()
    if args.prepare_only:
        return None
    # 5. train
    init_weights = None
    if args.init_from and not voi:
        from NoduleSAMLib.detect import load_checkpoint
        from NoduleSAMLib.models import detector_folder

        source = detector_folder(args.init_from)
        meta = json.loads((source / "model.json").read_text())
        init_weights = load_checkpoint(source / "fold_0" / meta["checkpoint"])["network_weights"]
        log(f"initial weights: {source}")
    results = nnunet.train(ds_id, plans_id, epochs, iters, val_iters, device=args.device, resume=True,
                           initial_lr=args.lr, oversample_foreground=args.oversample,
                           init_weights=init_weights, log=log)
    pd = nnunet.last_pseudo_dice(results)
    log(f"final pseudo dice: {pd}")
    state["result"] = pd
    save_state()
    # 6. package
    if not args.no_package:
        import torch

        extra = {"name": "nodule-voi" if voi else "nodule-detector", "training": {
            "dataset": nnunet.dataset_name(ds_id, ds_name), "compact_plan": asdict(compact),
            "schedule": state["schedule"], "sec_per_it": state.get("sec_per_it"), "log": pd,
            "torch": torch.__version__}}
        dest = nnunet.package_model(results, args.dest, extra=extra)
        size = (dest / "fold_0" / "checkpoint_final.pth").stat().st_size
        log(f"packaged -> {dest} (checkpoint {size / 1e6:.2f} MB)")
        return dest
    return results


def _predictor(model_dir: Path, device: str = "cpu", mirroring: bool = False):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                           device=torch.device(device), perform_everything_on_device=False, verbose=False,
                           allow_tqdm=False)
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    pred.initialize_from_trained_model_folder(str(model_dir), use_folds=tuple(meta["folds"]),
                                              checkpoint_name=meta["checkpoint"])
    return pred


def _components_report(pred_mask, gt_mask, min_fp_voxels: int = 1) -> dict:
    """Lesion-level counts: GT components hit by the prediction, predicted components with no GT."""
    import numpy as np
    from scipy import ndimage as ndi

    structure = np.ones((3,) * pred_mask.ndim, bool)
    gl, ng = ndi.label(gt_mask > 0, structure)
    pl, npred = ndi.label(pred_mask > 0, structure)
    hit = sum(1 for i in range(1, ng + 1) if (pred_mask[gl == i] > 0).any())
    sizes = ndi.sum(np.ones_like(pl), pl, index=np.arange(1, npred + 1)) if npred else []
    fp = sum(1 for i in range(1, npred + 1) if sizes[i - 1] >= min_fp_voxels and not (gt_mask[pl == i] > 0).any())
    inter = float(((pred_mask > 0) & (gt_mask > 0)).sum())
    denom = float((pred_mask > 0).sum() + (gt_mask > 0).sum())
    return {"gt_lesions": int(ng), "hit": int(hit), "pred_components": int(npred), "fp_components": int(fp),
            "dice": (2 * inter / denom) if denom else 1.0}


def evaluate_detector(model_dir: Path, lidc_dir: Path | None = None, device: str = "cpu", log=print,
                      n_paste_slices: int = 60, seed: int = 7) -> dict:
    """Quick check of a packaged detector.

    * Whole scans LIDC-IDRI-0001/0003 (their slices were used in training, so this is an
      in-distribution check): time per CT, 3D lesion hits / false-positive components, Dice.
    * Nodules of the VOI **test** split pasted into those scans' lung slices (unseen nodules):
      per-slice 2D recall of pasted nodules and false-positive components per slice.
    """
    import numpy as np
    from .detector_data import DetectorDataConfig, SCAN_IDS, iter_detector_slices, load_scan, default_lidc_dir

    lidc_dir = Path(lidc_dir) if lidc_dir else default_lidc_dir()
    pred = _predictor(model_dir, device)
    out: dict = {"scans": {}, "pasted_test": {}}
    for pid in SCAN_IDS:
        hu, lab, (sz, sy, sx) = load_scan(lidc_dir, pid)
        t = time.time()
        seg = pred.predict_single_npy_array(hu.astype(np.float32)[None], {"spacing": [sz, sy, sx]}, None, None, False)
        dt = time.time() - t
        rep = _components_report(seg, lab)
        rep.update({"slices": int(len(hu)), "seconds": round(dt, 1), "seconds_per_slice": round(dt / len(hu), 3)})
        out["scans"][pid] = rep
        log(f"eval {pid}: {rep}")
    cfg = DetectorDataConfig(seed=seed, n_paste_slices=n_paste_slices, n_negative_slices=0, voi_split="test",
                             keep_real_positive=False)
    slices = [s for s in iter_detector_slices(lidc_dir, cfg, log=lambda *a: None)]
    tot = {"gt_lesions": 0, "hit": 0, "fp_components": 0, "slices": len(slices)}
    for s in slices:
        seg = pred.predict_single_npy_array(s.image.astype(np.float32)[None, None],
                                            {"spacing": [999.0, *s.spacing]}, None, None, False)[0]
        # real nodules of the two scans may be on these slices too: count them as GT
        r = _components_report(seg, s.mask)
        for k in ("gt_lesions", "hit", "fp_components"):
            tot[k] += r[k]
    tot["recall"] = tot["hit"] / max(1, tot["gt_lesions"])
    tot["fp_per_slice"] = tot["fp_components"] / max(1, len(slices))
    out["pasted_test"] = tot
    log(f"eval pasted test-split nodules: {tot}")
    return out


def main(argv=None, voi: bool = False) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p, voi=voi)
    args = p.parse_args(argv)
    if args.evaluate_only:
        res = evaluate_detector(args.dest, args.lidc_dir, args.device)
        (args.work_dir / "evaluation.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
        return 0
    run(args, voi=voi)
    return 0


if __name__ == "__main__":
    sys.exit(main())
