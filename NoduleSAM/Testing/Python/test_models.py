"""The model registry: verified weights, refused tampered/truncated/unsafe checkpoints."""
import pickle
import shutil

import pytest
import torch

from NoduleSAMLib import models
from NoduleSAMLib.errors import NoduleSAMError


def test_bundled_litemedsam_is_verified_and_listed():
    path = models.bundled_litemedsam_path()
    models.verify_file(path, models.REFINERS["litemedsam"].sha256)
    rows = {row["name"]: row for row in models.model_rows()}
    assert rows["litemedsam"]["status"].startswith("ready")
    assert rows["sam_vit_b"]["status"] == "downloadable"
    assert ("litemedsam", True, str(path)) in models.verify_models()


def test_tampered_checkpoint_is_refused(tmp_path):
    tampered = tmp_path / "lite_medsam.pth"  # the official name: held to the official hash
    shutil.copy(models.bundled_litemedsam_path(), tampered)
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(NoduleSAMError, match="does not match the pinned"):
        models.build_sam("litemedsam", tampered)


def test_truncated_checkpoint_is_refused(tmp_path):
    truncated = tmp_path / "my_finetune.pth"
    truncated.write_bytes(models.bundled_litemedsam_path().read_bytes()[:1_000_000])
    with pytest.raises(NoduleSAMError, match="cannot load as a weights-only checkpoint"):
        models.build_sam("litemedsam", truncated)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_pickle_and_wrong_weights_are_refused(tmp_path):
    unsafe = tmp_path / "unsafe.pth"
    with open(unsafe, "wb") as handle:
        pickle.dump({"weight": Payload()}, handle)
    with pytest.raises(NoduleSAMError, match="weights-only"):
        models.load_weights(unsafe)
    wrong = tmp_path / "wrong.pth"
    torch.save({"layer.weight": torch.zeros(2)}, wrong)
    with pytest.raises(NoduleSAMError, match="do not fit refiner 'litemedsam'"):
        models.build_sam("litemedsam", wrong)


def test_missing_models_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("NODULESAM_CACHE", str(tmp_path))
    with pytest.raises(NoduleSAMError, match="nodulesam models download sam_vit_b"):
        models.build_sam("sam_vit_b")
    with pytest.raises(NoduleSAMError, match="--checkpoint"):
        models.build_sam("medsam_vit_b")
    with pytest.raises(NoduleSAMError, match="no verified download"):
        models.download("medsam_vit_b")
    with pytest.raises(NoduleSAMError, match="unknown refiner"):
        models.build_sam("sam_vit_z")
    with pytest.raises(NoduleSAMError, match="neither a registry name"):
        models.detector_folder(tmp_path / "nope")
    monkeypatch.setenv("NODULESAM_MODELS", str(tmp_path))
    with pytest.raises(NoduleSAMError, match="not installed.*--detector"):
        models.detector_folder("nodule-detector")


def test_cached_download_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("NODULESAM_CACHE", str(tmp_path))
    cached = tmp_path / "checkpoints" / "sam_vit_b_01ec64.pth"
    cached.parent.mkdir()
    cached.write_bytes(b"partial download")
    with pytest.raises(NoduleSAMError, match="does not match the pinned"):
        models.download("sam_vit_b")  # an existing file is verified, not trusted
