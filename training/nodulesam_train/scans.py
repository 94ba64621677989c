"""The whole chest CTs with reference lesions, and which of them trains and which evaluates.

Six CTs from three sources can be read (``../shared/data`` and the demo CT):

| scan | source | role |
|---|---|---|
| LIDC-IDRI-0001, LIDC-IDRI-0003 | LIDC-IDRI (DICOM) | training backgrounds |
| NSCLC-Radiomics-LUNG1-002 | NSCLC-Radiomics (3 mm) | training background |
| LIDC-IDRI-0314 | LIDC-IDRI (1 mm, NIfTI) | held out |
| NSCLC-Radiomics-LUNG1-003 | NSCLC-Radiomics (3 mm) | held out |
| demo (pyradiomics ``lung1``) | pyradiomics test data (5 mm) | held out |

No model of this project trains on a held-out scan, and none of their nodules is pasted into
training data: LIDC-IDRI-0314's one VOI case is in the VOI ``train`` split, so it is excluded
from every training pool (``HELD_OUT_PATIENTS``).

Reference lesions: LIDC clusters marked by at least 3 readers (the VOI rule and LUNA16's);
clusters of 1-2 readers are *ignored* (a candidate on them is neither a hit nor a false
positive). NSCLC GTVs inside the lungs (``case.json`` ``in_lung``); the lymph nodes outside the
lungs (LUNG1-003 GTV-2, GTV-3) are ignored the same way. The demo CT's one labelled lesion.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .detector_data import default_lidc_dir

TRAIN_SCANS = ("LIDC-IDRI-0001", "LIDC-IDRI-0003", "NSCLC-Radiomics-LUNG1-002")
HELD_OUT_SCANS = ("LIDC-IDRI-0314", "NSCLC-Radiomics-LUNG1-003", "demo")
HELD_OUT_PATIENTS = ("LIDC-IDRI-0314",)
MIN_READERS = 3


def default_chest_dir(lidc_dir: Path | None = None) -> Path:
    """The NSCLC-Radiomics CTs: next to the LIDC folder (``../shared/data/chest``)."""
    return Path(lidc_dir or default_lidc_dir()).parent / "chest"


@dataclass
class Lesion:
    """A reference lesion: ``value`` in the scan's label map, size, texture (LIDC 1-5 or None)."""

    value: int
    diameter_mm: float
    texture: float | None = None
    kind: str = "real"  # "real" or "pasted"
    source: str = ""    # VOI case id for pasted nodules


@dataclass
class Scan:
    """A CT (``NoduleSAMLib.volume.CTVolume``), its label map ``[z, y, x]`` (int32) and what the
    labels mean: ``lesions`` are the references, ``ignored`` label values count neither way."""

    name: str
    volume: object
    labels: np.ndarray
    lesions: list[Lesion] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)


def _read_label(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.int32)


def _lidc(name: str, lidc_dir: Path) -> Scan:
    from NoduleSAMLib.volume import read_ct

    scans = lidc_dir / "scans"
    reference = json.loads((scans / f"{name}.reference.json").read_text())
    nifti = scans / name / "ct.nii.gz"
    volume = read_ct(nifti if nifti.is_file() else scans / name)
    labels = _read_label(scans / f"{name}.consensus50.nii.gz")
    texture = _voi_textures(lidc_dir)
    scan = Scan(name, volume, labels)
    for nodule in reference["nodules"]:
        value = int(nodule["cluster_index"])
        if nodule["n_readers"] >= MIN_READERS:
            scan.lesions.append(Lesion(value, float(nodule["diameter_mm_mean"]),
                                       texture.get(nodule.get("voi_case_id"))))
        else:
            scan.ignored.append(value)
    return scan


def _voi_textures(lidc_dir: Path) -> dict:
    from .detector_data import read_cases

    return {c["case_id"]: float(c["texture_median"]) for c in read_cases(lidc_dir)
            if c.get("texture_median")}


def _nsclc(name: str, chest_dir: Path) -> Scan:
    from NoduleSAMLib.volume import read_ct

    folder = chest_dir / name
    case = json.loads((folder / "case.json").read_text())
    scan = Scan(name, read_ct(folder / "ct.nii.gz"), _read_label(folder / "lesions.nii.gz"))
    for lesion in case["lesions"]:
        if lesion["in_lung"]:
            scan.lesions.append(Lesion(int(lesion["label"]), float(lesion["longest_inplane_diameter_mm"])))
        else:
            scan.ignored.append(int(lesion["label"]))
    return scan


def _demo() -> Scan:
    from NoduleSAMLib.demo_data import demo_ct
    from NoduleSAMLib.volume import read_ct

    image, label = demo_ct()
    volume = read_ct(image)
    labels = (_read_label(label) > 0).astype(np.int32)
    return Scan("demo", volume, labels, [Lesion(1, largest_inplane_diameter_mm(labels == 1, volume.spacing_zyx_mm))])


def largest_inplane_diameter_mm(mask: np.ndarray, spacing_zyx_mm) -> float:
    """The largest distance between two voxel centres of ``mask`` on any one axial slice."""
    from scipy.spatial.distance import pdist

    best = 0.0
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        ys, xs = np.nonzero(mask[z])
        points = np.c_[ys * spacing_zyx_mm[1], xs * spacing_zyx_mm[2]]
        if len(points) > 1:
            if len(points) > 2000:
                points = points[np.random.default_rng(0).choice(len(points), 2000, replace=False)]
            best = max(best, float(pdist(points).max()))
    return best


def thicker(scan: Scan, factor: int) -> Scan:
    """The scan as a CT with ``factor`` times thicker slices: each new slice the mean HU of
    ``factor`` consecutive ones (the last partial group dropped), each label voxel the largest
    label among them (a lesion seen on any of the slices stays labelled). A training background
    of another slice thickness, made from the same patient."""
    from dataclasses import replace

    count = scan.volume.hu.shape[0] // factor
    if factor < 2 or count < 2:
        raise ValueError(f"cannot make {factor}x thicker slices from {scan.volume.hu.shape[0]}")
    shape = (count, factor) + scan.volume.hu.shape[1:]
    hu = scan.volume.hu[: count * factor].astype(np.float32).reshape(shape).mean(axis=1)
    labels = scan.labels[: count * factor].reshape(shape).max(axis=1)
    matrix = np.array(scan.volume.ijk_to_ras, float)
    matrix[:3, 3] += matrix[:3, 2] * (factor - 1) / 2  # the new slice's centre
    matrix[:3, 2] *= factor
    volume = replace(scan.volume, hu=hu.astype(scan.volume.hu.dtype), ijk_to_ras=matrix)
    return Scan(f"{scan.name}@{factor}x", volume, labels, list(scan.lesions), list(scan.ignored))


def available(name: str, lidc_dir: Path | None = None, chest_dir: Path | None = None) -> bool:
    """Whether ``name``'s files are present (the demo CT is fetched on demand, so it always is)."""
    lidc_dir = Path(lidc_dir or default_lidc_dir())
    chest_dir = Path(chest_dir or default_chest_dir(lidc_dir))
    if name == "demo":
        return True
    if name.startswith("LIDC"):
        return (lidc_dir / "scans" / f"{name}.reference.json").is_file()
    return (chest_dir / name / "case.json").is_file()


def load_scan(name: str, lidc_dir: Path | None = None, chest_dir: Path | None = None) -> Scan:
    """One of the CTs of the table above, with its references."""
    lidc_dir = Path(lidc_dir or default_lidc_dir())
    chest_dir = Path(chest_dir or default_chest_dir(lidc_dir))
    if name not in TRAIN_SCANS + HELD_OUT_SCANS:
        from NoduleSAMLib.errors import NoduleSAMError

        raise NoduleSAMError(f"unknown scan '{name}'; known: {', '.join(TRAIN_SCANS + HELD_OUT_SCANS)}")
    if not available(name, lidc_dir, chest_dir):
        from NoduleSAMLib.errors import NoduleSAMError

        raise NoduleSAMError(f"scan '{name}' not found under {lidc_dir / 'scans'} or {chest_dir} "
                             "(set NODULESAM_LIDC_DIR to the shared LIDC folder)")
    if name == "demo":
        return _demo()
    if name.startswith("LIDC"):
        return _lidc(name, lidc_dir)
    return _nsclc(name, chest_dir)
