"""Real (not mocked) nnU-Net v2 2D training on a tiny set of LIDC VOI central slices:
export -> verify_dataset_integrity -> plan -> compact plan -> preprocess -> train -> package ->
load with ``weights_only=True`` -> predict with nnU-Net's own predictor from the packaged folder.

Needs the shared LIDC data (``../shared/data/lidc`` or ``$NODULESAM_LIDC_DIR``); skipped without it.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lidc_data import LIDC_DIR, needs_voi

pytestmark = needs_voi


@pytest.fixture()
def nnunet_env(tmp_path, monkeypatch):
    # register the variables with monkeypatch so they are restored after the test
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_def_n_proc", "nnUNet_n_proc_DA"):
        monkeypatch.setenv(k, "")
    from nodulesam_train import nnunet

    nnunet.set_nnunet_env(tmp_path, n_proc=2, n_proc_da=2)
    return tmp_path


def test_voi_central_slices_shapes():
    from nodulesam_train.detector_data import voi_central_slices

    slices = voi_central_slices(LIDC_DIR, split="train", limit=5)
    assert len(slices) == 5
    for s in slices:
        assert s.image.ndim == 2 and s.image.shape == s.mask.shape
        assert s.mask.sum() > 0
        assert all(0.3 < v < 1.5 for v in s.spacing)


def test_lung_mask_and_paste_on_real_slice():
    from nodulesam_train.detector_data import load_scan, lung_mask_2d, voi_patches, paste_nodule, read_cases

    hu, lab, (sz, sy, sx) = load_scan(LIDC_DIR, "LIDC-IDRI-0001")
    k = len(hu) // 2
    lung = lung_mask_2d(hu[k])
    assert lung.sum() > 10000  # mid-chest slice: both lungs
    assert hu[k][lung > 0].mean() < -600
    case = next(c for c in read_cases(LIDC_DIR) if c["split"] == "train" and float(c["diameter_mm"]) > 8)
    patch = voi_patches(LIDC_DIR, case)[0]
    img, msk, allowed = hu[k].copy(), np.zeros_like(lab[k]), lung.copy()
    rng = np.random.default_rng(0)
    assert paste_nodule(img, msk, allowed, patch, (sy, sx), rng)
    assert msk.sum() > 0 and np.all(lung[msk > 0] > 0)  # the label lies inside the lung
    assert img[msk > 0].mean() > hu[k][msk > 0].mean() + 200  # a nodule is denser than lung
    changed = img != hu[k]
    assert changed.sum() < 4 * msk.sum() + 400  # only around the pasted nodule


@pytest.mark.slow
def test_tiny_nnunet_training_end_to_end(nnunet_env, tmp_path):
    import torch
    from nodulesam_train import nnunet
    from nodulesam_train.detector_data import voi_central_slices

    slices = voi_central_slices(LIDC_DIR, split="train", limit=20)
    raw = nnunet.export_dataset(slices, nnunet_env, 990, "TinyVOI", overwrite=True)
    ds = json.loads((raw / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"} and ds["labels"] == {"background": 0, "nodule": 1}
    assert ds["numTraining"] == 20
    nnunet.verify_export(990)  # raises on a malformed export

    nnunet.plan_and_preprocess(990, check_integrity=False)
    compact = nnunet.CompactPlan(plans_name="nnUNetPlans_tiny", features=(4, 8, 16, 32), patch_size=(48, 48),
                                 spacing=(0.8, 0.8), batch_size=4)
    plans_id = nnunet.make_compact_plan(990, compact)
    nnunet.preprocess_plan(990, plans_id)
    assert nnunet.network_parameter_count(990, plans_id) < 100_000
    nnunet.write_split(990, val_fraction=0.2, seed=0)
    # nnU-Net's single-threaded loader is the fastest choice for a few dozen iterations (the
    # planner needs a positive count, so this is set only now)
    os.environ["nnUNet_n_proc_DA"] = "0"

    results = nnunet.train(990, plans_id, num_epochs=2, iterations_per_epoch=15, val_iterations_per_epoch=3,
                           device="cpu")
    assert (results / "fold_0" / "checkpoint_final.pth").is_file()
    log = nnunet.last_pseudo_dice(results)
    assert "pseudo_dice" in log and len(log["pseudo_dice"]) == 1

    dest = nnunet.package_model(results, tmp_path / "packaged")
    ck_path = dest / "fold_0" / "checkpoint_final.pth"
    ck = torch.load(ck_path, map_location="cpu", weights_only=True)
    assert set(ck) == {"network_weights", "trainer_name", "inference_allowed_mirroring_axes", "init_args"}
    assert ck["init_args"] == {"configuration": "2d", "fold": 0}
    assert ck["trainer_name"] == "nnUNetTrainer"
    assert all(v.dtype == torch.float16 for v in ck["network_weights"].values() if torch.is_floating_point(v))
    meta = json.loads((dest / "model.json").read_text())
    assert meta["configuration"] == "2d" and meta["plans"] == "nnUNetPlans_tiny" and meta["folds"] == [0]
    assert meta["sha256"]["fold_0/checkpoint_final.pth"] == nnunet.sha256_file(ck_path)
    assert json.loads((dest / "plans.json").read_text())["plans_name"] == "nnUNetPlans_tiny"

    # a results folder whose checkpoint runs code when unpickled is refused, and nothing runs
    import shutil

    from NoduleSAMLib.errors import NoduleSAMError

    evil = tmp_path / "evil_results"
    shutil.copytree(results, evil)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"network_weights": {}, "trainer_name": Payload()}, evil / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(NoduleSAMError, match="weights-only"):
        nnunet.package_model(evil, tmp_path / "evil_packaged")
    assert not marker.exists()

    # nnU-Net's own predictor loads the stripped folder and runs on a slice
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=torch.device("cpu"),
                           perform_everything_on_device=False, verbose=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(dest), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    s = slices[0]
    x = s.image.astype(np.float32)[None, None]
    seg = pred.predict_single_npy_array(x, {"spacing": [999.0, *s.spacing]}, None, None, False)
    assert seg.shape == x.shape[1:]
    assert set(np.unique(seg)) <= {0, 1}
