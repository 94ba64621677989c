"""The bundled fine-tuned refiner (litemedsam-nodule): verified, tampering refused, segments."""
import shutil

import numpy as np
import pytest

from NoduleSAMLib import models
from NoduleSAMLib.errors import NoduleSAMError

NAME = "litemedsam-nodule"


def test_bundled_finetuned_refiner_is_verified_and_listed():
    path, sha256 = models.refiner_checkpoint(models.REFINERS[NAME], None)
    assert path.is_file() and path.stat().st_size < 12e6  # prompt encoder + mask decoder only
    models.verify_file(path, sha256)
    rows = {row["name"]: row for row in models.model_rows()}
    assert rows[NAME]["status"].startswith("ready")
    assert (NAME, True, str(path)) in models.verify_models()


def test_finetuned_refiner_keeps_the_stock_encoder_and_changes_the_decoder(sam):
    import torch

    tuned = models.build_sam(NAME)
    stock, new = sam.state_dict(), tuned.state_dict()
    assert all(torch.equal(stock[k], new[k]) for k in stock if k.startswith("image_encoder."))
    assert any(not torch.equal(stock[k], new[k]) for k in stock if k.startswith("mask_decoder."))


def test_tampered_finetuned_refiner_is_refused(tmp_path, monkeypatch):
    path, _ = models.refiner_checkpoint(models.REFINERS[NAME], None)
    shutil.copytree(path.parent, tmp_path / NAME)
    tampered = tmp_path / NAME / path.name
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    monkeypatch.setenv("NODULESAM_MODELS", str(tmp_path))
    with pytest.raises(NoduleSAMError, match="does not match the pinned"):
        models.build_sam(NAME)


def test_a_full_checkpoint_is_not_taken_as_a_delta():
    with pytest.raises(NoduleSAMError, match="not a prompt encoder \\+ mask decoder delta"):
        models.build_sam(NAME, checkpoint=models.bundled_litemedsam_path())


def test_finetuned_refiner_segments_a_real_voi_from_a_box(lidc_dir):
    import SimpleITK as sitk

    from NoduleSAMLib.boxes import Candidate
    from NoduleSAMLib.refine import BoxRefiner

    folder = lidc_dir / "voi" / "LIDC-IDRI-0031_N5"  # a test-split nodule
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "image.nii.gz"))).astype(np.float32)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "consensus50.nii.gz"))) > 0
    zs, ys, xs = np.nonzero(truth)
    box = (zs.min(), zs.max() + 1, ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
    refiner = BoxRefiner(models.build_sam(NAME), encoder="auto")
    mask = refiner.refine(hu, Candidate("n", tuple(int(v) for v in box), source="given box"), "voi")
    inside = truth[box[0]:box[1], box[2]:box[3], box[4]:box[5]]
    assert mask.shape == inside.shape and mask.dtype == bool
    assert 2 * (mask & inside).sum() / (mask.sum() + inside.sum()) > 0.7
