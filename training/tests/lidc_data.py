"""Where the training tests find the shared LIDC data, and the marks that skip without it."""
import pytest

from nodulesam_train.detector_data import default_lidc_dir

LIDC_DIR = default_lidc_dir()
needs_voi = pytest.mark.skipif(not (LIDC_DIR / "voi" / "cases.csv").is_file(),
                               reason=f"shared LIDC VOIs not found at {LIDC_DIR / 'voi'} "
                                      "(set NODULESAM_LIDC_DIR)")
needs_scans = pytest.mark.skipif(
    not (LIDC_DIR / "scans" / "LIDC-IDRI-0001.consensus50.nii.gz").is_file(),
    reason=f"shared LIDC scans not found at {LIDC_DIR / 'scans'} (set NODULESAM_LIDC_DIR)")

CHEST_DIR = LIDC_DIR.parent / "chest"
needs_chest = pytest.mark.skipif(
    not (CHEST_DIR / "NSCLC-Radiomics-LUNG1-003" / "case.json").is_file(),
    reason=f"shared NSCLC-Radiomics CTs not found at {CHEST_DIR} (next to the LIDC folder)")
