"""The candidate classifier trains a few real steps on real cubes, and packages verified.

Cubes come from LIDC-IDRI-0001 (a training scan): its own nodule, real ``train``-split VOI
nodules pasted into its lungs, and vessel / pleura / parenchyma points. About 30 s on 2 cores.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from lidc_data import LIDC_DIR, needs_scans, needs_voi

pytestmark = [needs_scans, needs_voi]


@pytest.fixture(scope="module")
def cubes():
    from scipy import ndimage

    from nodulesam_train import scans, train_fpr
    from nodulesam_train.detector_data import read_cases

    scan = scans.load_scan("LIDC-IDRI-0001", LIDC_DIR)
    rng = np.random.default_rng(0)
    excluded = set(scans.TRAIN_SCANS) | set(scans.HELD_OUT_PATIENTS)
    cases = {split: [c for c in read_cases(LIDC_DIR) if c["split"] == split and c["patient_id"] not in excluded]
             for split in ("train", "val")}
    train, val = train_fpr._Examples(), train_fpr._Examples()
    train_fpr.lesion_cubes(scan, train, rng, repeats=6)
    placed = train_fpr.pasted_cubes(scan, cases["train"][:8], LIDC_DIR, train, rng, jitters=1)
    train_fpr.pasted_cubes(scan, cases["val"][:3], LIDC_DIR, val, rng, jitters=0)
    near = ndimage.binary_dilation(scan.labels > 0, iterations=3)
    train_fpr.background_cubes(scan, near, train, val, rng,
                               counts={"vessel": 24, "lung boundary": 10, "parenchyma": 6})
    return scan, placed, {"train": train.arrays(), "val": val.arrays()}


def test_cubes_are_real_and_labelled(cubes):
    from NoduleSAMLib.fpr import PATCH

    scan, placed, data = cubes
    patches, extents, labels, kinds = data["train"]
    assert placed >= 6, "most of the 8 VOI nodules should fit into the lungs of LIDC-IDRI-0001"
    assert patches.shape[1:] == (PATCH, PATCH, PATCH) and len(patches) == len(labels) == len(kinds)
    assert set(kinds[labels == 1]) == {"real lesion", "pasted VOI"}
    assert set(kinds[labels == 0]) <= {"vessel", "lung boundary", "parenchyma"}
    # a nodule fills the cube's centre with soft tissue; parenchyma cubes are mostly air there
    centre = np.s_[:, 12:20, 12:20, 12:20]
    assert patches[labels == 1][centre].astype(float).mean() > patches[kinds == "parenchyma"][centre].astype(float).mean()
    assert np.all(np.isfinite(extents))


def test_classifier_trains_and_packages_verified(cubes, tmp_path):
    import torch

    from NoduleSAMLib.errors import NoduleSAMError
    from NoduleSAMLib.fpr import FalsePositiveReducer, build_network
    from nodulesam_train import train_fpr

    _, _, data = cubes
    initial = {k: v.clone() for k, v in build_network().state_dict().items()}
    state, history, best = train_fpr.train(data, epochs=2, steps_per_epoch=3, batch_size=8, seed=0,
                                           log=lambda *a: None)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert 0 <= history[-1]["val_auc"] <= 1
    assert set(state) == set(initial)
    assert any(not torch.equal(state[k], initial[k]) for k in state if state[k].is_floating_point())

    card = {"name": "test", "operating_points": {n: {"threshold": t} for n, t in
                                                 (("high", 0.2), ("balanced", 0.5), ("specific", 0.8))}}
    folder = train_fpr.package(state, tmp_path / "fpr", card)
    reducer = FalsePositiveReducer(folder)
    patches, extents, labels, _ = data["val"]
    scores = reducer.score_patches(patches.astype(np.float32), extents)
    assert scores.shape == labels.shape and np.all((scores >= 0) & (scores <= 1))
    assert reducer.threshold("balanced") == 0.5
    with pytest.raises(NoduleSAMError, match="sensitivity"):
        reducer.threshold("maximal")
    # a tampered checkpoint is refused by its pinned SHA-256
    checkpoint = folder / json.loads((folder / "model.json").read_text())["checkpoint"]
    raw = bytearray(checkpoint.read_bytes())
    raw[-10] ^= 0xFF
    checkpoint.write_bytes(bytes(raw))
    with pytest.raises(NoduleSAMError, match="SHA-256"):
        FalsePositiveReducer(folder)
