"""Suite-wide fixtures: a real nnU-Net v2 2D model trained in the test session.

The model is trained once on LIDC VOI central slices (train split) and cached under pytest's
cache folder (``.pytest_cache``), so later runs reuse it; ``pytest --cache-clear`` retrains.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "training"))
from nodulesam_train.detector_data import default_lidc_dir  # noqa: E402

LIDC = default_lidc_dir()
TINY_MODEL_VERSION = "tiny-voi-v1"


def train_tiny_voi_model(work: Path) -> Path:
    """Export 80 VOI central slices, plan a small U-Net (4 stages, 64 px patches) and train it
    for 300 iterations on the CPU; returns the packaged results folder."""
    from nodulesam_train import nnunet
    from nodulesam_train.detector_data import voi_central_slices

    nnunet.set_nnunet_env(work / "nnunet", n_proc=2, n_proc_da=2)
    slices = voi_central_slices(LIDC, split="train", limit=80)
    nnunet.export_dataset(slices, work / "nnunet", 991, "TestVOI", overwrite=True)
    nnunet.plan_and_preprocess(991, check_integrity=False)
    plan = nnunet.CompactPlan(plans_name="nnUNetPlans_test", features=(8, 16, 32, 64),
                              patch_size=(64, 64), spacing=(0.8, 0.8), batch_size=8)
    plans_id = nnunet.make_compact_plan(991, plan)
    nnunet.preprocess_plan(991, plans_id)
    nnunet.write_split(991, val_fraction=0.1, seed=0)
    os.environ["nnUNet_n_proc_DA"] = "0"  # in-process loading: no worker processes under pytest
    results = nnunet.train(991, plans_id, num_epochs=3, iterations_per_epoch=100,
                           val_iterations_per_epoch=2, device="cpu")
    return nnunet.package_model(results, work / "packaged")


@pytest.fixture(scope="session")
def tiny_voi_model(request) -> Path:
    """A packaged nnU-Net v2 2D results folder (weights only, SHA-256 pinned in model.json)."""
    if not (LIDC / "voi" / "cases.csv").is_file():
        pytest.skip(f"LIDC-IDRI data not found at {LIDC} (set NODULESAM_LIDC_DIR): the test "
                    "detector is trained on it")
    work = Path(request.config.cache.mkdir(TINY_MODEL_VERSION))
    packaged = work / "packaged"
    if not (packaged / "model.json").is_file():
        saved = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed",
                                                 "nnUNet_results", "nnUNet_def_n_proc",
                                                 "nnUNet_n_proc_DA")}
        try:
            train_tiny_voi_model(work)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return packaged
