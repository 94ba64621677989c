"""A tiny nnU-Net v2 2D model on LIDC VOI central slices, for the test suite: seeded, checked
before it is cached, and cached under a key that names everything that produced it.

- **Seeded.** Python's, numpy's and torch's generators are seeded before training, torch runs
  its deterministic algorithms, and nnU-Net's data loading and augmentation run in the trainer's
  own process (``nnUNet_n_proc_DA=0``: no worker processes), so every random draw (the network's
  initial weights, the cases and patches sampled, every augmentation) comes from those seeds.
  Two runs on the same machine with the same thread count give bit-identical weights
  (``test_tiny_model.py`` checks it). Across machines or thread counts, floating-point reduction
  order may differ, so weights may differ in the last bits.
- **Checked before caching.** The trained model segments the central slices of
  ``n_check`` train-split VOIs it never saw (held aside from its 80 cases); its pooled foreground
  Dice must reach ``min_dice``. If it does not, it is retrained once with the next seed; if that
  fails too, :class:`TinyModelError` says so. A model is trained in a scratch folder and moved
  into the cache only once it has passed, so a bad one is never cached.
- **Keyed.** The cache folder's name is a hash of the settings, the case lists, the versions of
  nnunetv2 and torch, and this module's source: change any of them and it retrains.

Measured spread over seeds 0-4 with the defaults (2 CPU cores): check Dice 0.705-0.753
(``SEED_SPREAD``), so the 0.5 check has a margin of 0.2. Training costs about 2 minutes.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

# Check Dice of the default settings for seeds 0..4 (`python -m nodulesam_train.tiny_model
# --spread 5`, 2026-12-01, 2 shared CPU cores, torch 2.14.1, nnunetv2 2.8.1): 0.729, 0.753,
# 0.738, 0.740, 0.705 (mean 0.733, range 0.705-0.753), against the check's 0.5.
SEED_SPREAD = (0.729, 0.753, 0.738, 0.740, 0.705)


class TinyModelError(RuntimeError):
    """The tiny model failed its check for every seed tried."""


@dataclass(frozen=True)
class TinySettings:
    n_cases: int = 80          # train-split VOI central slices it trains on
    n_check: int = 12          # further train-split VOIs, held aside for the check
    features: tuple = (8, 16, 32, 64)
    patch_px: int = 64
    spacing_mm: float = 0.8
    batch_size: int = 8
    epochs: int = 4
    iterations: int = 100
    val_iterations: int = 2
    seed: int = 0
    min_dice: float = 0.5
    selection_seed: int = 20240601  # which cases train and which check (not the training seed)


def case_ids(lidc_dir: Path, settings: TinySettings) -> tuple[list[str], list[str]]:
    """The training and the check cases: disjoint, drawn from the VOI ``train`` split."""
    from .detector_data import read_cases

    ids = sorted(c["case_id"] for c in read_cases(lidc_dir) if c["split"] == "train")
    order = np.random.default_rng(settings.selection_seed).permutation(len(ids))
    chosen = [ids[i] for i in order[: settings.n_cases + settings.n_check]]
    return sorted(chosen[: settings.n_cases]), sorted(chosen[settings.n_cases:])


def cache_key(settings: TinySettings, train_ids, check_ids) -> str:
    import nnunetv2
    import torch

    from importlib.metadata import version

    digest = hashlib.sha256()
    digest.update(json.dumps(asdict(settings), sort_keys=True).encode())
    digest.update("\n".join(train_ids).encode() + b"|" + "\n".join(check_ids).encode())
    digest.update(f"nnunetv2 {getattr(nnunetv2, '__version__', None) or version('nnunetv2')}".encode())
    digest.update(f"torch {torch.__version__}".encode())
    digest.update(inspect.getsource(sys.modules[__name__]).encode())
    return digest.hexdigest()[:16]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train(work: Path, lidc_dir: Path, settings: TinySettings, train_ids, seed: int) -> Path:
    """Export, plan, train (seeded) and package; returns the packaged results folder."""
    from . import nnunet
    from .detector_data import voi_central_slice

    saved = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                             "nnUNet_def_n_proc", "nnUNet_n_proc_DA")}
    try:
        nnunet.set_nnunet_env(work / "nnunet", n_proc=2, n_proc_da=2)
        slices = [voi_central_slice(lidc_dir, case_id) for case_id in train_ids]
        nnunet.export_dataset(slices, work / "nnunet", 991, "TestVOI", overwrite=True, log=lambda *a: None)
        nnunet.plan_and_preprocess(991, check_integrity=False, log=lambda *a: None)
        plan = nnunet.CompactPlan(plans_name="nnUNetPlans_test", features=tuple(settings.features),
                                  patch_size=(settings.patch_px, settings.patch_px),
                                  spacing=(settings.spacing_mm, settings.spacing_mm),
                                  batch_size=settings.batch_size)
        plans_id = nnunet.make_compact_plan(991, plan, log=lambda *a: None)
        nnunet.preprocess_plan(991, plans_id, log=lambda *a: None)
        nnunet.write_split(991, val_fraction=0.1, seed=0)
        # data loading and augmentation in this process (the planner above needs a positive count)
        os.environ["nnUNet_n_proc_DA"] = "0"
        seed_everything(seed)
        results = nnunet.train(991, plans_id, num_epochs=settings.epochs,
                               iterations_per_epoch=settings.iterations,
                               val_iterations_per_epoch=settings.val_iterations, device="cpu",
                               resume=False, log=lambda *a: None)
        return nnunet.package_model(results, work / "packaged")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_dice(packaged: Path, lidc_dir: Path, check_ids) -> float:
    """Pooled foreground Dice of the model on the central slices of ``check_ids``."""
    from NoduleSAMLib.detect import Detector
    from NoduleSAMLib.volume import read_ct

    import SimpleITK as sitk

    detector = Detector(packaged)
    detector.predictor.allow_tqdm = False
    both = total = 0
    for case_id in check_ids:
        folder = lidc_dir / "voi" / case_id
        volume = read_ct(folder / "image.nii.gz")
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "consensus50.nii.gz"))) > 0
        k = int(np.argmax(truth.sum(axis=(1, 2))))
        predicted = detector.predict(replace(volume, hu=volume.hu[k:k + 1])).mask[0]
        both += int((predicted & truth[k]).sum())
        total += int(predicted.sum() + truth[k].sum())
    return 2 * both / total if total else 0.0


def cached_model(cache_root: Path, lidc_dir: Path, settings: TinySettings = TinySettings(), log=print) -> Path:
    """The packaged tiny model for ``settings``: from the cache, or trained, checked and cached."""
    train_ids, check_ids = case_ids(lidc_dir, settings)
    final = Path(cache_root) / f"tiny-voi-{cache_key(settings, train_ids, check_ids)}"
    if (final / "check.json").is_file():
        return final / "packaged"
    failures = []
    for seed in (settings.seed, settings.seed + 1):
        scratch = Path(cache_root) / f".{final.name}.seed{seed}.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        packaged = train(scratch, lidc_dir, settings, train_ids, seed)
        dice = check_dice(packaged, lidc_dir, check_ids)
        log(f"tiny model, seed {seed}: check Dice {dice:.3f} (needs {settings.min_dice})")
        if dice >= settings.min_dice:
            (scratch / "check.json").write_text(json.dumps({"seed": seed, "dice": dice, "check_cases": check_ids,
                                                            "settings": asdict(settings)}, indent=1))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(scratch, final)
            return final / "packaged"
        failures.append(f"seed {seed}: Dice {dice:.3f}")
        shutil.rmtree(scratch, ignore_errors=True)
    raise TinyModelError(f"the tiny test model failed its check (foreground Dice >= {settings.min_dice} on "
                         f"{len(check_ids)} held-aside VOIs) for every seed: {'; '.join(failures)}. Nothing "
                         "was cached; look at the training data or the settings")


def main(argv=None) -> int:
    """``python -m nodulesam_train.tiny_model --spread N``: check Dice for seeds 0..N-1."""
    import argparse
    import tempfile

    from .detector_data import default_lidc_dir

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--spread", type=int, default=5)
    args = parser.parse_args(argv)
    lidc_dir = default_lidc_dir()
    settings = TinySettings()
    train_ids, check_ids = case_ids(lidc_dir, settings)
    for seed in range(args.spread):
        with tempfile.TemporaryDirectory() as scratch:
            packaged = train(Path(scratch), lidc_dir, settings, train_ids, seed)
            print(f"seed {seed}: check Dice {check_dice(packaged, lidc_dir, check_ids):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
