"""Shared fixtures: the LIDC data (skipped where absent), the bundled refiner, a real CT crop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nodulesam_train.detector_data import default_lidc_dir

LIDC = default_lidc_dir()
SERIES_0001 = "LIDC-IDRI-0001"


def lidc_or_skip() -> Path:
    if not (LIDC / "voi" / "cases.csv").is_file():
        pytest.skip(f"LIDC-IDRI data not found at {LIDC} (set NODULESAM_LIDC_DIR); "
                    "data-dependent tests need it")
    return LIDC


@pytest.fixture(scope="session")
def lidc_dir() -> Path:
    return lidc_or_skip()


@pytest.fixture(scope="session")
def series_0001(lidc_dir) -> Path:
    """The DICOM folder of LIDC-IDRI-0001 (133 slices)."""
    return next(p.parent for p in (lidc_dir / "scans" / SERIES_0001).rglob("*.dcm"))


@pytest.fixture(scope="session")
def ct_0001(series_0001):
    from NoduleSAMLib.volume import read_ct

    return read_ct(series_0001)


@pytest.fixture(scope="session")
def reference_0001(lidc_dir):
    """The consensus label map of LIDC-IDRI-0001 on the CT grid, ``[z, y, x]``."""
    import SimpleITK as sitk

    path = lidc_dir / "scans" / f"{SERIES_0001}.consensus50.nii.gz"
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="session")
def nodule_crop_0001(ct_0001, reference_0001):
    """A 24 x 128 x 128 sub-volume around nodule 1 of LIDC-IDRI-0001 with correct geometry, and
    its reference mask."""
    from NoduleSAMLib.geometry import apply_matrix
    from NoduleSAMLib.volume import CTVolume

    z0, y0, x0 = 78, 301, 254
    region = np.s_[z0:z0 + 24, y0:y0 + 128, x0:x0 + 128]
    ijk_to_ras = ct_0001.ijk_to_ras.copy()
    ijk_to_ras[:3, 3] = apply_matrix(ct_0001.ijk_to_ras, [x0, y0, z0])
    crop = CTVolume(ct_0001.hu[region].copy(), ijk_to_ras, "LIDC-IDRI-0001 crop")
    return crop, reference_0001[region] > 0


@pytest.fixture(scope="session")
def sam():
    from NoduleSAMLib.models import build_sam

    return build_sam("litemedsam")


class _MemoisedDetector:
    """A real ``Detector`` whose predictions are kept per volume object, so that several tests
    asking about the same CT run the network once."""

    def __init__(self, detector):
        self.detector = detector
        self.predictor = detector.predictor
        self._memo: dict[int, tuple] = {}

    def predict(self, volume):
        if id(volume) not in self._memo:
            self._memo[id(volume)] = (volume, self.detector.predict(volume))  # keeps volume alive
        return self._memo[id(volume)][1]


@pytest.fixture(scope="session")
def bundled_detector():
    """The shipped ``nodule-detector`` (about 25 s per whole CT on 2 cores)."""
    from NoduleSAMLib.detect import Detector
    from NoduleSAMLib.models import detector_folder

    detector = Detector(detector_folder("nodule-detector"))
    detector.predictor.allow_tqdm = False
    return _MemoisedDetector(detector)
