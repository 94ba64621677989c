"""nnU-Net v2 2D training, headless: export -> plan/preprocess -> compact plan -> train -> package.

Typical use (training spawns worker processes, so keep it under ``if __name__ == "__main__":``)::

    from nodulesam_train import nnunet
    env = nnunet.set_nnunet_env(work_dir)
    nnunet.export_dataset(slices, work_dir, dataset_id=501, dataset_name="NoduleDetector")
    nnunet.plan_and_preprocess(501)
    plans_id = nnunet.make_compact_plan(501, nnunet.CompactPlan())
    nnunet.preprocess_plan(501, plans_id)
    out = nnunet.train(501, plans_id, num_epochs=20, iterations_per_epoch=100)
    nnunet.package_model(out, "NoduleSAM/Resources/Models/nodule-detector")

``slices`` is any iterable of objects with ``name``, ``image`` (HU ``[y, x]``), ``mask``
(``[y, x]``, > 0 = nodule) and ``spacing`` (``(sy, sx)`` mm), e.g.
:class:`nodulesam_train.detector_data.Slice2D`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

CONFIGURATION = "2d"
DEFAULT_PLANS = "nnUNetPlans"


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------
def set_nnunet_env(work_dir: str | Path, n_proc: int = 2, n_proc_da: int = 2) -> dict[str, str]:
    """Point nnU-Net at ``work_dir/{nnUNet_raw,nnUNet_preprocessed,nnUNet_results}`` (created) and
    limit its process counts. Sets ``os.environ``; nnunetv2 2.8 reads the paths lazily, and the
    process-count default is refreshed in ``nnunetv2.configuration`` if it was imported already."""
    work_dir = Path(work_dir).resolve()
    env = {
        "nnUNet_raw": str(work_dir / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work_dir / "nnUNet_preprocessed"),
        "nnUNet_results": str(work_dir / "nnUNet_results"),
    }
    for v in env.values():
        Path(v).mkdir(parents=True, exist_ok=True)
    env["nnUNet_def_n_proc"] = str(int(n_proc))
    env["nnUNet_n_proc_DA"] = str(int(n_proc_da))
    os.environ.update(env)
    import sys

    conf = sys.modules.get("nnunetv2.configuration")
    if conf is not None:
        conf.default_num_processes = int(n_proc)
    return env


def dataset_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def _find_dataset_name(dataset_id: int) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    return convert_id_to_dataset_name(int(dataset_id))


def _safe_case_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", str(name))


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
def write_2d_nifti(path: str | Path, array2d: np.ndarray, spacing_yx: Sequence[float]) -> None:
    """Write a 2D ``[y, x]`` array as 2D NIfTI (SimpleITK, spacing ``(sx, sy)``)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array2d))
    img.SetSpacing((float(spacing_yx[1]), float(spacing_yx[0])))
    sitk.WriteImage(img, str(path), useCompression=True)


def export_dataset(slices: Iterable, work_dir: str | Path, dataset_id: int, name: str,
                   overwrite: bool = False, log=print) -> Path:
    """Export 2D HU slices + masks as an nnU-Net v2 raw dataset.

    Writes ``nnUNet_raw/DatasetXXX_name/{imagesTr,labelsTr,dataset.json}`` with channel ``CT``
    (nnU-Net's CT normalisation) and labels ``{background: 0, nodule: 1}``. Returns the folder."""
    set_nnunet_env(work_dir, int(os.environ.get("nnUNet_def_n_proc", 2)), int(os.environ.get("nnUNet_n_proc_DA", 2)))
    folder = Path(os.environ["nnUNet_raw"]) / dataset_name(dataset_id, name)
    if folder.exists():
        if overwrite:
            shutil.rmtree(folder)
        elif (folder / "dataset.json").exists():
            log(f"export: {folder} exists, kept (overwrite=False)")
            return folder
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    names: set[str] = set()
    manifest = []
    for s in slices:
        case = _safe_case_name(s.name)
        if case in names:
            raise ValueError(f"duplicate case name {case}")
        names.add(case)
        img = np.asarray(s.image)
        msk = (np.asarray(s.mask) > 0).astype(np.uint8)
        if img.ndim != 2 or img.shape != msk.shape:
            raise ValueError(f"{case}: image {img.shape} / mask {msk.shape} must be equal 2D shapes")
        write_2d_nifti(folder / "imagesTr" / f"{case}_0000.nii.gz", img.astype(np.int16 if np.issubdtype(img.dtype, np.integer) else np.float32), s.spacing)
        write_2d_nifti(folder / "labelsTr" / f"{case}.nii.gz", msk, s.spacing)
        manifest.append({"case": case, "spacing": [float(v) for v in s.spacing], "foreground_px": int(msk.sum()),
                         **{k: v for k, v in getattr(s, "info", {}).items() if isinstance(v, (str, int, float, list))}})
    if not names:
        raise ValueError("no slices to export")
    ds = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "nodule": 1},
        "numTraining": len(names),
        "file_ending": ".nii.gz",
        "name": name,
        "description": "NoduleSAM 2D nodule segmentation slices (LIDC-IDRI derived)",
    }
    (folder / "dataset.json").write_text(json.dumps(ds, indent=2))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log(f"export: {len(names)} cases -> {folder}")
    return folder


def verify_export(dataset_id: int, num_processes: int = 2) -> None:
    """Run nnU-Net's ``verify_dataset_integrity`` on the exported raw dataset (raises on failure)."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(Path(os.environ["nnUNet_raw"]) / _find_dataset_name(dataset_id)), num_processes)


def write_split(dataset_id: int, val_fraction: float = 0.1, seed: int = 0,
                val_cases: Sequence[str] | None = None) -> list[dict]:
    """Write ``splits_final.json`` with a single fold 0 (train/val); ``val_cases`` or a seeded
    random ``val_fraction`` of the cases."""
    from nnunetv2.paths import nnUNet_raw, nnUNet_preprocessed

    dsn = _find_dataset_name(dataset_id)
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (Path(str(nnUNet_raw)) / dsn / "imagesTr").glob("*_0000.nii.gz"))
    if val_cases is None:
        rng = np.random.default_rng(seed)
        n_val = max(1, int(round(len(cases) * val_fraction)))
        val = sorted(rng.choice(cases, size=n_val, replace=False).tolist())
    else:
        val = sorted(_safe_case_name(c) for c in val_cases)
    val_set = set(val)
    splits = [{"train": [c for c in cases if c not in val_set], "val": val}]
    out = Path(str(nnUNet_preprocessed)) / dsn
    out.mkdir(parents=True, exist_ok=True)
    (out / "splits_final.json").write_text(json.dumps(splits, indent=1))
    return splits


# --------------------------------------------------------------------------------------------
# Planning / preprocessing
# --------------------------------------------------------------------------------------------
def plan_and_preprocess(dataset_id: int, preprocess_default: bool = False, check_integrity: bool = True,
                        num_processes: int | None = None, log=print) -> str:
    """Fingerprint + plan (``ExperimentPlanner`` -> ``nnUNetPlans``); optionally preprocess its 2d
    configuration (usually only the compact plan is preprocessed). Returns the plans identifier."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)

    n = int(num_processes or os.environ.get("nnUNet_def_n_proc", 2))
    t = time.time()
    extract_fingerprints([int(dataset_id)], num_processes=n, check_dataset_integrity=check_integrity,
                         show_progress_bar=False)
    plans_id = plan_experiments([int(dataset_id)])
    if preprocess_default:
        preprocess([int(dataset_id)], plans_id, configurations=(CONFIGURATION,), num_processes=(n,),
                   show_progress_bar=False)
    log(f"plan: {plans_id} in {time.time() - t:.0f} s")
    return plans_id


@dataclass
class CompactPlan:
    """A small, CPU-friendly 2D U-Net plan (edits of nnU-Net's planned ``2d`` configuration)."""

    plans_name: str = "nnUNetPlans_compact"
    features: tuple[int, ...] = (8, 16, 32, 64, 128, 128)
    patch_size: tuple[int, int] = (288, 288)
    spacing: tuple[float, float] = (1.3, 1.3)  # (sy, sx) mm
    batch_size: int = 4
    n_conv_per_stage: int = 2
    n_conv_per_stage_decoder: int = 1


def make_compact_plan(dataset_id: int, compact: CompactPlan | None = None,
                      source_plans: str = DEFAULT_PLANS, log=print) -> str:
    """Write ``<compact.plans_name>.json`` next to the planned ``source_plans``: its ``2d``
    configuration with fewer features/stages, the given patch size, target spacing and batch
    size (other configurations dropped). Returns the new plans identifier."""
    from nnunetv2.paths import nnUNet_preprocessed

    compact = compact or CompactPlan()
    dsn = _find_dataset_name(dataset_id)
    base = Path(str(nnUNet_preprocessed)) / dsn
    plans = json.loads((base / f"{source_plans}.json").read_text())
    cfg = copy.deepcopy(plans["configurations"][CONFIGURATION])
    n = len(compact.features)
    arch = cfg["architecture"]["arch_kwargs"]
    strides = [[1, 1]] + [[2, 2]] * (n - 1)
    factor = 2 ** (n - 1)
    for p in compact.patch_size:
        if p % factor:
            raise ValueError(f"patch size {compact.patch_size} must be divisible by {factor} for {n} stages")
    arch.update({
        "n_stages": n,
        "features_per_stage": [int(f) for f in compact.features],
        "kernel_sizes": [[3, 3]] * n,
        "strides": strides,
        "n_conv_per_stage": [int(compact.n_conv_per_stage)] * n,
        "n_conv_per_stage_decoder": [int(compact.n_conv_per_stage_decoder)] * (n - 1),
    })
    cfg.update({
        "data_identifier": f"{compact.plans_name}_{CONFIGURATION}",
        "batch_size": int(compact.batch_size),
        "patch_size": [int(p) for p in compact.patch_size],
        "spacing": [float(s) for s in compact.spacing],
    })
    # informative only: the median shape after resampling to the new spacing
    old_sp = plans["configurations"][CONFIGURATION]["spacing"]
    old_med = plans["configurations"][CONFIGURATION]["median_image_size_in_voxels"]
    cfg["median_image_size_in_voxels"] = [round(m * o / s) for m, o, s in zip(old_med, old_sp, compact.spacing)]
    plans["plans_name"] = compact.plans_name
    plans["configurations"] = {CONFIGURATION: cfg}
    out = base / f"{compact.plans_name}.json"
    out.write_text(json.dumps(plans, indent=2))
    log(f"compact plan {compact.plans_name}: {asdict(compact)}")
    return compact.plans_name


def preprocess_plan(dataset_id: int, plans_id: str, num_processes: int | None = None, log=print) -> None:
    """Preprocess the ``2d`` configuration of ``plans_id``."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess

    n = int(num_processes or os.environ.get("nnUNet_def_n_proc", 2))
    t = time.time()
    preprocess([int(dataset_id)], plans_id, configurations=(CONFIGURATION,), num_processes=(n,), show_progress_bar=False)
    log(f"preprocess {plans_id}/{CONFIGURATION}: {time.time() - t:.0f} s")


def network_parameter_count(dataset_id: int, plans_id: str) -> int:
    """Number of parameters of the plan's network (built on the CPU, nothing trained)."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    dsn = _find_dataset_name(dataset_id)
    pm = PlansManager(str(Path(str(nnUNet_preprocessed)) / dsn / f"{plans_id}.json"))
    cm = pm.get_configuration(CONFIGURATION)
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 1, 2, allow_init=True, deep_supervision=True)
    return int(sum(p.numel() for p in net.parameters()))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def get_trainer(dataset_id: int, plans_id: str, fold: int = 0, device: str = "cpu",
                continue_training: bool = False, trainer_class=None):
    """Instantiate nnU-Net's ``nnUNetTrainer`` for ``plans_id`` / ``2d`` / ``fold``."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed

    if trainer_class is None:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as trainer_class
    dsn = _find_dataset_name(dataset_id)
    base = Path(str(nnUNet_preprocessed)) / dsn
    plans = json.loads((base / f"{plans_id}.json").read_text())
    plans["continue_training"] = bool(continue_training)
    dataset_json = json.loads((base / "dataset.json").read_text())
    return trainer_class(plans=plans, configuration=CONFIGURATION, fold=fold, dataset_json=dataset_json,
                         device=torch.device(device))


def train(dataset_id: int, plans_id: str, num_epochs: int, iterations_per_epoch: int,
          val_iterations_per_epoch: int = 10, fold: int = 0, device: str = "cpu",
          resume: bool = True, save_every: int = 5, initial_lr: float | None = None,
          run_validation: bool = False, torch_threads: int | None = None,
          oversample_foreground: float | None = None, init_weights: dict | None = None,
          log=print) -> Path:
    """Train fold ``fold`` and return the trainer's results folder (the one holding
    ``plans.json``, ``dataset.json`` and ``fold_<n>/``). Resumes from ``checkpoint_latest.pth``
    when ``resume`` and one exists; returns at once when ``checkpoint_final.pth`` exists.
    ``init_weights`` (a network state dict of the same plan) starts a new run from an earlier
    model instead of from random weights (fine-tuning).

    Must be called under ``if __name__ == "__main__":`` (data augmentation spawns processes)."""
    import torch

    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    trainer = get_trainer(dataset_id, plans_id, fold, device, continue_training=resume)
    out_fold = Path(trainer.output_folder)
    out_base = Path(trainer.output_folder_base)
    final = out_fold / "checkpoint_final.pth"
    if resume and final.exists():
        log(f"train: {final} exists, nothing to do")
        return out_base
    trainer.num_epochs = int(num_epochs)
    trainer.num_iterations_per_epoch = int(iterations_per_epoch)
    trainer.num_val_iterations_per_epoch = int(val_iterations_per_epoch)
    trainer.save_every = max(1, int(save_every))
    if initial_lr is not None:
        trainer.initial_lr = float(initial_lr)
    if oversample_foreground is not None:
        trainer.oversample_foreground_percent = float(oversample_foreground)
    latest = out_fold / "checkpoint_latest.pth"
    if resume and latest.exists():
        log(f"train: resuming from {latest}")
        trainer.load_checkpoint(str(latest))
        # the checkpoint's init args / epochs count: keep the requested schedule
        trainer.num_epochs = int(num_epochs)
    elif init_weights is not None:
        trainer.initialize()
        trainer.network.load_state_dict({k: v.float() for k, v in init_weights.items()})
        log("train: network initialised from an earlier model's weights")
    t = time.time()
    log(f"train: {num_epochs} epochs x {iterations_per_epoch} it (val {val_iterations_per_epoch} it), "
        f"device {device}, output {out_fold}")
    if num_epochs == 0:  # the initial weights, saved as a final checkpoint (nnU-Net cannot run 0 epochs)
        if not trainer.was_initialized:
            trainer.num_epochs = 1  # its learning-rate schedule divides by the epoch count
            trainer.initialize()
        out_fold.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(final))
        (out_base / "plans.json").write_text(json.dumps(trainer.plans_manager.plans, indent=2))
        (out_base / "dataset.json").write_text(json.dumps(trainer.dataset_json, indent=2))
        return out_base
    trainer.run_training()
    log(f"train: done in {time.time() - t:.0f} s")
    if run_validation:
        trainer.perform_actual_validation(False)
    return out_base


def time_iterations(dataset_id: int, plans_id: str, n_iterations: int = 6, device: str = "cpu",
                    log=print) -> float:
    """Seconds per training iteration for this plan, measured over ``n_iterations`` after one
    warm-up iteration (a throwaway trainer; writes only into the results folder of fold 0's
    timing copy)."""
    trainer = get_trainer(dataset_id, plans_id, 0, device)
    trainer.disable_checkpointing = True
    trainer.num_epochs = 1
    trainer.on_train_start()
    try:
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        trainer.train_step(next(trainer.dataloader_train))
        t = time.time()
        for _ in range(n_iterations):
            trainer.train_step(next(trainer.dataloader_train))
        sec = (time.time() - t) / n_iterations
    finally:
        try:
            trainer.on_train_end()
        except Exception as e:  # pragma: no cover - best effort shutdown of the loaders
            log(f"timing: loader shutdown: {e}")
    # the timing run must not leave files that a real training would resume from
    shutil.rmtree(trainer.output_folder_base, ignore_errors=True)
    log(f"timing: {sec:.2f} s/iteration (batch {trainer.batch_size}, patch {trainer.configuration_manager.patch_size})")
    return sec


# --------------------------------------------------------------------------------------------
# Packaging
# --------------------------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_model(results_folder: str | Path, dest: str | Path, fold: int = 0,
                  checkpoint: str = "checkpoint_final.pth", extra: dict | None = None) -> Path:
    """Write a stripped nnU-Net results folder to ``dest``:

    ``dataset.json``, ``plans.json``, ``fold_0/checkpoint_final.pth`` (float16 weights, trainer
    name, mirroring axes, init args only; loads with ``torch.load(..., weights_only=True)``) and
    ``model.json`` (configuration, plans identifier, folds, checkpoint name, SHA-256)."""
    import torch
    from NoduleSAMLib.detect import load_checkpoint

    results_folder, dest = Path(results_folder), Path(dest)
    src_ckpt = results_folder / f"fold_{fold}" / checkpoint
    ckpt = load_checkpoint(src_ckpt)  # weights only, numpy scalars allowlisted: never arbitrary code
    weights = {k: (v.detach().to(torch.float16) if torch.is_floating_point(v) else v.detach()).contiguous()
               for k, v in ckpt["network_weights"].items()}
    mirror = ckpt.get("inference_allowed_mirroring_axes")
    stripped = {
        "network_weights": weights,
        "trainer_name": str(ckpt["trainer_name"]),
        "inference_allowed_mirroring_axes": tuple(int(a) for a in mirror) if mirror is not None else None,
        "init_args": {"configuration": CONFIGURATION, "fold": int(fold)},
    }
    plans = json.loads((results_folder / "plans.json").read_text())
    (dest / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results_folder / "dataset.json", dest / "dataset.json")
    (dest / "plans.json").write_text(json.dumps(plans, indent=2))
    out_ckpt = dest / f"fold_{fold}" / "checkpoint_final.pth"
    torch.save(stripped, out_ckpt)
    torch.load(out_ckpt, map_location="cpu", weights_only=True)  # must load safely
    meta = {
        "configuration": CONFIGURATION,
        "plans": plans.get("plans_name"),
        "folds": [int(fold)],
        "checkpoint": "checkpoint_final.pth",
        "sha256": {f"fold_{fold}/checkpoint_final.pth": sha256_file(out_ckpt)},
    }
    if extra:
        meta.update(extra)
    (dest / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return dest


def last_pseudo_dice(results_folder: str | Path, fold: int = 0) -> dict:
    """The last ``Pseudo dice`` / ``EMA`` values and epoch count from the fold's nnU-Net training log."""
    logs = sorted((Path(results_folder) / f"fold_{fold}").glob("training_log_*.txt"))
    out: dict = {}
    for lf in logs:
        for line in lf.read_text().splitlines():
            if "Pseudo dice" in line:
                m = re.search(r"Pseudo dice \[(.*)\]", line)
                if m:
                    body = re.sub(r"np\.float\d+\(([^)]*)\)", r"\1", m.group(1))
                    out["pseudo_dice"] = [float(v) for v in body.split(",") if v.strip()]
            if "Epoch " in line and "Epoch time" not in line:
                m = re.search(r"Epoch (\d+)", line)
                if m:
                    out["last_epoch"] = int(m.group(1))
            if "New best EMA pseudo Dice" in line:
                out["best_ema_pseudo_dice"] = float(line.rsplit(":", 1)[1])
    return out
