"""``nodulesam-train classify`` and ``evaluate --save-masks`` on a handful of real LIDC VOI cases.

The classifier is really trained (two epochs on the first 6 cases of each split, 32 px inputs).
Its mask sources are the real 50 % consensus and a copy with some masks emptied (a method that
found nothing). Needs the shared LIDC data; skipped without it.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from lidc_data import LIDC_DIR, needs_voi

pytestmark = needs_voi
VOI = LIDC_DIR / "voi"
LIMIT = 6
EMPTIED = 2  # per split, the first cases' masks are emptied in the "partial" source


def _rows(limit=LIMIT):
    from nodulesam_train.lidc import read_cases_csv

    table = read_cases_csv(VOI / "cases.csv")
    return {s: [r for r in table if r["split"] == s][:limit] for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def mask_dirs(tmp_path_factory):
    """consensus_train/ and consensus_valtest/: the real consensus of the first LIMIT cases per
    split (two folders, as evaluate writes one per split); partial/: the same masks with the
    first EMPTIED of each split emptied."""
    from nodulesam_train.lidc import voi_case

    base = tmp_path_factory.mktemp("masks")
    for name in ("consensus_train", "consensus_valtest", "partial"):
        (base / name).mkdir()
    for split, rows in _rows().items():
        for i, row in enumerate(rows):
            gt = voi_case(VOI, row).consensus.astype(np.uint8)
            folder = base / ("consensus_train" if split == "train" else "consensus_valtest")
            np.savez_compressed(folder / f"{row['case_id']}.npz", consensus=gt)
            np.savez_compressed(base / "partial" / f"{row['case_id']}.npz",
                                partial=np.zeros_like(gt) if i < EMPTIED else gt)
    return base


def _classify(mask_dirs, out, seeds="0,1", backbones="efficientnet_b0,resnet18,mobilenet_v3_small"):
    from nodulesam_train.cli import main

    consensus = f"consensus={mask_dirs / 'consensus_train'},{mask_dirs / 'consensus_valtest'}"
    rc = main(["classify", "--voi-dir", str(VOI), "--masks", consensus, "--masks", f"partial={mask_dirs / 'partial'}",
               "--backbones", backbones, "--seeds", seeds,
               "--epochs", "2", "--batch-size", "4", "--image-size", "32", "--spacing-mm", "1.5",
               "--limit", str(LIMIT), "--out", str(out)])
    assert rc == 0
    return json.loads((out / "summary.json").read_text())


def test_masked_crop_real_case():
    from nodulesam_train.classify import masked_crop
    from nodulesam_train.lidc import voi_case, window01

    row = _rows(1)["test"][0]
    case = voi_case(VOI, row)
    crop = masked_crop(case.hu, case.consensus, case.spacing, image_size=64, spacing_mm=case.spacing[0])
    assert crop.shape == (64, 64) and crop.dtype == np.float32
    assert 0.0 <= crop.min() and crop.max() <= 1.0
    # at the slice's own spacing the crop holds exactly the windowed HU inside the mask
    inside = window01(case.hu)[case.consensus > 0]
    assert (crop > 0).sum() == (inside > 0).sum()
    assert np.isclose(crop.sum(), inside.sum(), rtol=1e-4)
    # the mask's bounding box is centred
    ys, xs = np.nonzero(crop > 0)
    assert abs((ys.min() + ys.max()) / 2 - 31.5) <= 1.0 and abs((xs.min() + xs.max()) / 2 - 31.5) <= 1.0
    # at 1 mm per pixel a pixel is 1 mm^2: the image's integral scales with the pixel area
    coarse = masked_crop(case.hu, case.consensus, case.spacing, image_size=64, spacing_mm=1.0)
    assert coarse.sum() == pytest.approx(inside.sum() * case.spacing[0] * case.spacing[1], rel=0.1)
    empty = masked_crop(case.hu, np.zeros_like(case.consensus), case.spacing)
    assert empty.shape == (64, 64) and not empty.any()
    from NoduleSAMLib.errors import NoduleSAMError

    with pytest.raises(NoduleSAMError, match="full central slice"):
        masked_crop(case.hu, case.consensus[1:], case.spacing)


def test_classify_end_to_end(mask_dirs, tmp_path):
    from nodulesam_train.classify import BACKBONES, PREDICTION_COLUMNS

    out = tmp_path / "cls"
    summary = _classify(mask_dirs, out)
    assert summary["sources"] == ["consensus", "partial"] and summary["seeds"] == [0, 1]
    assert summary["data"]["n_cases"] == {"train": LIMIT, "val": LIMIT, "test": LIMIT}
    # empty masks are counted, not fatal
    assert summary["empty_masks"]["consensus"] == {"train": 0, "val": 0, "test": 0}
    assert summary["empty_masks"]["partial"] == {"train": EMPTIED, "val": EMPTIED, "test": EMPTIED}
    for backbone in BACKBONES:
        for source in ("consensus", "partial"):
            entry = summary["results"][backbone][source]
            assert set(entry["seeds"]) == {"0", "1"}
            for m in entry["seeds"].values():
                assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["macro_f1"] <= 1.0
                assert m["auc_ovr"] is None or 0.0 <= m["auc_ovr"] <= 1.0
            assert 0.0 <= entry["accuracy_mean"] <= 1.0 and entry["accuracy_std"] >= 0.0
            assert entry["best_epoch"]["0"] in (0, 1)
    assert summary["results"]["efficientnet_b0"]["partial"]["design_auc"] is None
    kappa = summary["reader_agreement"]["voi"]["all"]
    assert set(kappa) == {"3", "4"} and all(-1.0 <= g["fleiss_kappa"] <= 1.0 for g in kappa.values())

    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == PREDICTION_COLUMNS
    assert len(rows) == LIMIT * 2 * len(BACKBONES) * 2  # test cases x sources x backbones x seeds
    test_ids = [r["case_id"] for r in _rows()["test"]]
    for r in rows:
        probs = [float(r[f"prob_{c}"]) for c in range(3)]
        assert abs(sum(probs) - 1.0) < 1e-4 and min(probs) >= 0.0
        assert int(r["pred"]) == int(np.argmax(probs)) and r["label"] in ("0", "1", "2")
        assert r["empty_mask"] == ("1" if r["source"] == "partial" and test_ids.index(r["case_id"]) < EMPTIED else "0")
    md = (out / "summary.md").read_text()
    assert "Table 3" in md and "Table 4" in md and "| efficientnet_b0 |" in md and "Fleiss" in md

    # a rerun with the same settings reuses the stored runs and gives the same summary
    again = _classify(mask_dirs, out)
    assert again["results"] == summary["results"]


def test_classify_train_source(mask_dirs, tmp_path):
    """Trained on the VOI's consensus only, tested on each source's test masks; a source added
    later is predicted by the stored models, not retrained."""
    from nodulesam_train.cli import main

    test_only = tmp_path / "partial_test"
    test_only.mkdir()
    for row in _rows()["test"]:
        (test_only / f"{row['case_id']}.npz").write_bytes((mask_dirs / "partial" / f"{row['case_id']}.npz").read_bytes())
    common = ["classify", "--voi-dir", str(VOI), "--backbones", "resnet18", "--seeds", "0", "--epochs", "2",
              "--batch-size", "4", "--image-size", "32", "--spacing-mm", "1.5", "--limit", str(LIMIT),
              "--train-source", "consensus", "--out", str(tmp_path / "ts")]
    assert main(common + ["--masks", "consensus"]) == 0
    first = json.loads((tmp_path / "ts" / "summary.json").read_text())
    assert main(common + ["--masks", "consensus", "--masks", f"partial={test_only}"]) == 0
    second = json.loads((tmp_path / "ts" / "summary.json").read_text())
    assert second["train_s"] == first["train_s"]  # the stored model, not a new one
    assert second["results"]["resnet18"]["consensus"] == first["results"]["resnet18"]["consensus"]
    partial = second["results"]["resnet18"]["partial"]
    assert partial["trained_on"] == "consensus" and 0.0 <= partial["accuracy_mean"] <= 1.0
    assert second["empty_masks"]["partial"] == {"train": None, "val": None, "test": EMPTIED}
    assert "trained, and its epoch chosen, on the **consensus**" in (tmp_path / "ts" / "summary.md").read_text()
    with open(tmp_path / "ts" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * LIMIT and {r["source"] for r in rows} == {"consensus", "partial"}


def _probabilities(folder):
    with open(folder / "predictions.csv", newline="") as f:
        return [[float(r[f"prob_{c}"]) for c in range(3)] for r in csv.DictReader(f)]


def test_classify_seed_reproducible(mask_dirs, tmp_path):
    a = _classify(mask_dirs, tmp_path / "a", seeds="0", backbones="mobilenet_v3_small")
    b = _classify(mask_dirs, tmp_path / "b", seeds="0", backbones="mobilenet_v3_small")
    _classify(mask_dirs, tmp_path / "c", seeds="1", backbones="mobilenet_v3_small")
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()
    assert a["results"] == b["results"]
    assert _probabilities(tmp_path / "a") != _probabilities(tmp_path / "c")  # another seed, another model


def test_classify_missing_masks_is_a_user_error(mask_dirs, tmp_path, capsys):
    from nodulesam_train.cli import main

    rc = main(["classify", "--voi-dir", str(VOI), "--masks", f"partial={mask_dirs / 'partial'}",
               "--limit", str(LIMIT + 1), "--epochs", "1", "--out", str(tmp_path / "x")])
    assert rc == 2 and "no mask in" in capsys.readouterr().err
    rc = main(["classify", "--voi-dir", str(VOI), "--masks", f"yolo={mask_dirs / 'partial'}",
               "--limit", str(LIMIT), "--epochs", "1", "--out", str(tmp_path / "x")])
    assert rc == 2 and "no key 'yolo'" in capsys.readouterr().err
    rc = main(["classify", "--voi-dir", str(VOI), "--masks", f"partial={mask_dirs / 'consensus_train'}",
               "--limit", str(LIMIT), "--epochs", "1", "--out", str(tmp_path / "x")])
    assert rc == 2 and "no mask in" in capsys.readouterr().err  # val and test are in the other folder


def test_evaluate_save_masks(voi_model, tmp_path):
    from nodulesam_train.cli import main
    from nodulesam_train.lidc import voi_case

    out = tmp_path / "eval"
    rc = main(["evaluate", "--voi-dir", str(VOI), "--split", "train", "--limit", "2", "--model", str(voi_model),
               "--methods", "nnunet,hybrid", "--save-masks", "--threads", "1", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"n_cases", "nnunet", "hybrid", "wilcoxon_p_dsc", "wilcoxon_p_iou"}
    assert json.loads((out / "run.json").read_text())["methods"] == ["nnunet", "hybrid"]
    rows = _rows(2)["train"]
    with open(out / "cases.csv", newline="") as f:
        cases = list(csv.DictReader(f))
    assert [r["case_id"] for r in cases] == [r["case_id"] for r in rows]
    assert not any(k.startswith("sam_gt_box") for k in cases[0])
    for row, scored in zip(rows, cases):
        case = voi_case(VOI, row)
        with np.load(out / "masks" / f"{row['case_id']}.npz") as z:
            assert sorted(z.files) == ["consensus", "hybrid", "nnunet"]
            for key in z.files:
                assert z[key].dtype == np.uint8 and z[key].shape == case.hu.shape
            assert (z["consensus"] == case.consensus).all()
            # the saved masks are the ones scored
            from nodulesam_train.metrics import overlap

            for method in ("nnunet", "hybrid"):
                assert overlap(z[method] > 0, case.consensus > 0)["dsc"] == pytest.approx(
                    float(scored[f"{method}_dsc"]), abs=1e-5)
