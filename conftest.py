"""Suite-wide fixtures: a real nnU-Net v2 2D model trained in the test session.

The model (``nodulesam_train.tiny_model``) is trained seeded on LIDC VOI central slices (train
split), checked on held-aside VOIs before it is cached, and cached under pytest's cache folder
(``.pytest_cache``) by a key naming everything that produced it, so later runs reuse it and any
change of settings, data, versions or its code retrains it. Training it costs about 2 minutes on
2 CPU cores; a cached one costs nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "training"))
from nodulesam_train.detector_data import default_lidc_dir  # noqa: E402

LIDC = default_lidc_dir()


@pytest.fixture(scope="session")
def tiny_voi_model(request) -> Path:
    """A packaged nnU-Net v2 2D results folder (weights only, SHA-256 pinned in model.json)."""
    from nodulesam_train.tiny_model import TinyModelError, cached_model

    if not (LIDC / "voi" / "cases.csv").is_file():
        pytest.skip(f"LIDC-IDRI data not found at {LIDC} (set NODULESAM_LIDC_DIR): the test "
                    "detector is trained on it")
    try:
        return cached_model(Path(request.config.cache.mkdir("tiny-voi")), LIDC)
    except TinyModelError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="module")
def voi_model(request):
    """The bundled ``nodule-voi`` when installed, else the tiny model above."""
    from NoduleSAMLib.errors import NoduleSAMError
    from NoduleSAMLib.models import detector_folder

    try:
        return detector_folder("nodule-voi")
    except NoduleSAMError:
        return request.getfixturevalue("tiny_voi_model")
