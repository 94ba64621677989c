"""Read a chest CT (DICOM series, NRRD, NIfTI, MHA) into HU with its geometry, and check it."""
from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import NoduleSAMError
from .geometry import RAS_FROM_LPS, apply_matrix, zyx_to_ijk

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
# Relative tolerance on slice gaps before a series counts as unevenly spaced (missing slices).
SLICE_GAP_TOLERANCE = 0.01
# Largest difference of direction cosines between the slices of one series (about 0.06 deg).
ORIENTATION_TOLERANCE = 1e-3
# Largest drift of slice positions off the slice normal over a series, in pixels, before it counts
# as gantry tilt (the slices are sheared, not stacked).
TILT_TOLERANCE_PX = 0.1
# The detector and the diameters work on axial slices: a volume whose slice normal is further
# than this from the LPS z axis (after any permutation of its axes) is refused as oblique, one
# further than OBLIQUE_WARNING_DEG is read with a warning.
MAX_OBLIQUE_DEG = 30.0
OBLIQUE_WARNING_DEG = 5.0
# Slices further apart than this get a warning: small nodules may fall between them.
THICK_SLICES_MM = 3.0
# What each slice of a DICOM series must carry, and how many numbers.
# RescaleSlope and RescaleIntercept are required (type 1) in a CT image: without them the
# stored values are not HU, and a missing intercept would shift every voxel (often by 1024).
REQUIRED_TAGS = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2,
                 "Rows": 1, "Columns": 1, "RescaleSlope": 1, "RescaleIntercept": 1}


@dataclass
class CTVolume:
    """A CT in Hounsfield units with its geometry.

    hu: float32 array ``[z, y, x]`` (= ``[k, j, i]``).
    ijk_to_ras: 4x4 matrix from voxel indices ``(i, j, k)`` to RAS millimetres, as Slicer's
      volume nodes hold it. LPS (DICOM/ITK) is derived from it.
    """

    hu: np.ndarray
    ijk_to_ras: np.ndarray
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def ijk_to_lps(self) -> np.ndarray:
        return RAS_FROM_LPS @ self.ijk_to_ras

    @property
    def spacing_ijk_mm(self) -> np.ndarray:
        """Voxel size along i, j, k (x, y, z) in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def spacing_zyx_mm(self) -> np.ndarray:
        return self.spacing_ijk_mm[::-1].copy()

    @property
    def origin_lps_mm(self) -> np.ndarray:
        return self.ijk_to_lps[:3, 3].copy()

    @property
    def direction_lps(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit directions of i, j, k in LPS."""
        return self.ijk_to_lps[:3, :3] / self.spacing_ijk_mm

    def zyx_to_ras(self, points_zyx) -> np.ndarray:
        return apply_matrix(self.ijk_to_ras, zyx_to_ijk(points_zyx))

    def zyx_to_lps(self, points_zyx) -> np.ndarray:
        return apply_matrix(self.ijk_to_lps, zyx_to_ijk(points_zyx))

    @classmethod
    def from_lps(cls, hu, spacing_ijk_mm, origin_lps_mm, direction_lps=None, source=""):
        """Build from ITK-style geometry (spacing, origin and direction in LPS)."""
        direction = np.eye(3) if direction_lps is None else np.asarray(direction_lps, float)
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, :3] = direction @ np.diag(np.asarray(spacing_ijk_mm, float))
        ijk_to_lps[:3, 3] = origin_lps_mm
        return cls(np.asarray(hu, dtype=np.float32), RAS_FROM_LPS @ ijk_to_lps, source)


def read_ct(path: str | Path, series_uid: str | None = None) -> CTVolume:
    """Read a CT from a DICOM series folder or a NRRD/NIfTI/MHA file and check it is usable.

    series_uid: which series to read when a folder holds several.
    Raises NoduleSAMError with a message saying what is wrong and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise NoduleSAMError(f"{path}: no such file or folder")
    if path.is_dir():
        volume = read_dicom_series(path, series_uid)
    elif path.name.lower().endswith(IMAGE_SUFFIXES):
        volume = read_image_file(path)
    else:
        raise NoduleSAMError(f"{path}: not a DICOM folder nor one of {', '.join(IMAGE_SUFFIXES)}")
    volume = reorient_to_axial(volume)
    check_ct(volume)
    return volume


def read_image_file(path: Path) -> CTVolume:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise NoduleSAMError(f"{path}: cannot read the image ({str(err).strip().splitlines()[-1]})")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise NoduleSAMError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components "
                             "per voxel; a CT has one (grey values in HU)")
    if image.GetDimension() != 3:
        raise NoduleSAMError(f"{path}: is a {image.GetDimension()}D image; NoduleSAM needs a 3D CT")
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_data(path)
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return CTVolume.from_lps(hu, image.GetSpacing(), image.GetOrigin(), direction, str(path))


def _check_nifti_data(path: Path) -> None:
    """Read a NIfTI file's stored voxels with nibabel and refuse a truncated file or non-finite
    values. ITK's NIfTI reader accepts both silently: it fills a truncated .nii or .nii.gz
    with whatever it has, and turns NaN and infinite voxels into 0 HU (soft tissue)."""
    import nibabel

    try:
        stored = np.asanyarray(nibabel.load(path).dataobj.get_unscaled())
    except Exception as err:  # nibabel raises many types for damaged files
        raise NoduleSAMError(f"{path}: cannot read the image data, the file is truncated or "
                             f"damaged ({str(err).strip().splitlines()[0]})") from None
    if np.issubdtype(stored.dtype, np.floating):
        _refuse_non_finite(stored, str(path))


def _refuse_non_finite(values: np.ndarray, name: str) -> None:
    bad = values.size - int(np.count_nonzero(np.isfinite(values)))
    if bad:
        raise NoduleSAMError(f"{name}: {bad} voxel(s) are NaN or infinite; a CT holds finite HU. "
                             "Fill them (e.g. with -1000 HU, air) before segmenting")


def read_dicom_series(folder: Path, series_uid: str | None = None) -> CTVolume:
    """Read one CT series with pydicom: slices sorted along the slice normal, HU from the rescale.

    Every slice must carry its geometry (position, orientation, pixel spacing, size) as numbers.
    Compressed pixel data are decoded by whichever pydicom plugin is installed (GDCM is a
    dependency); where none is, the message names the transfer syntax.
    """
    import pydicom

    slices = _series_slices(folder, series_uid)
    modality = str(slices[0][1].get("Modality", ""))
    if modality != "CT":
        raise NoduleSAMError(f"{folder}: modality is '{modality}', not CT. NoduleSAM segments "
                             "lung nodules on CT only")
    if len(slices) < 2:
        raise NoduleSAMError(f"{folder}: the series has one slice; NoduleSAM needs a 3D CT")
    for file, header in slices:
        for keyword, count in REQUIRED_TAGS.items():
            _numbers(header, keyword, count, file)

    first_file, first = slices[0]
    row_dir, col_dir, normal = _slice_axes(slices, folder)
    positions = np.array([_numbers(h, "ImagePositionPatient", 3, f) for f, h in slices])
    order = np.argsort(positions @ normal)
    slices = [slices[i] for i in order]
    positions = positions[order]
    pixel_spacing = _numbers(first, "PixelSpacing", 2, first_file)  # (row gap, column gap)
    _refuse_gantry_tilt(positions, normal, float(pixel_spacing.min()), folder)
    gaps = np.diff(positions @ normal)
    if np.any(gaps < 1e-3):
        dup = slices[int(np.argmin(gaps)) + 1][0].name
        raise NoduleSAMError(f"{folder}: two slices share one position (e.g. {dup}); the folder "
                             "mixes acquisitions. Pass a folder with one series")
    slice_gap = float(np.median(gaps))
    if np.max(np.abs(gaps - slice_gap)) > SLICE_GAP_TOLERANCE * slice_gap:
        bad = int(np.argmax(np.abs(gaps - slice_gap)))
        raise NoduleSAMError(
            f"{folder}: slices are unevenly spaced (gap {gaps[bad]:.2f} mm after "
            f"{slices[bad][0].name}, typical {slice_gap:.2f} mm): slices are missing or the series "
            "is irregular. Resample it to even spacing first")

    shape = tuple(int(_numbers(first, keyword, 1, first_file)[0]) for keyword in ("Rows", "Columns"))
    hu = np.empty((len(slices),) + shape, np.float32)
    for k, (file, _) in enumerate(slices):
        try:
            ds = pydicom.dcmread(file)
        except Exception as err:  # pydicom raises many types for broken files
            raise NoduleSAMError(f"{file}: broken DICOM file ({err})") from None
        _check_decoder(ds, file)
        try:
            pixels = ds.pixel_array
        except Exception as err:  # pydicom raises many types for broken pixel data
            raise NoduleSAMError(f"{file}: broken DICOM pixel data ({err})") from None
        if pixels.shape != hu.shape[1:]:
            raise NoduleSAMError(f"{file}: slice is {pixels.shape}, others {hu.shape[1:]}")
        slope = _numbers(ds, "RescaleSlope", 1, file)[0]
        intercept = _numbers(ds, "RescaleIntercept", 1, file)[0]
        hu[k] = pixels * slope + intercept

    direction = np.column_stack([row_dir, col_dir, normal])
    spacing = (pixel_spacing[1], pixel_spacing[0], slice_gap)
    return CTVolume.from_lps(hu, spacing, positions[0], direction, str(folder))


def dicom_series_headers(folder: Path) -> dict[str, list]:
    """SeriesInstanceUID -> the ``(file, header)`` of each single-frame image slice under
    ``folder`` (headers without pixel data; files that are not DICOM are skipped)."""
    import pydicom

    series = defaultdict(list)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError):
            continue
        # Single-frame images only (not a report, a structure set or a multi-frame SEG). A slice
        # that lost its position still counts, so that it is reported instead of dropped.
        if "ImagePositionPatient" in header or ("Rows" in header and
                                                "PerFrameFunctionalGroupsSequence" not in header):
            series[str(header.get("SeriesInstanceUID", "?"))].append((file, header))
    return series


def _series_slices(folder: Path, series_uid: str | None) -> list:
    """The ``(file, header)`` of each image slice of the one series to read in ``folder``."""
    series = dicom_series_headers(folder)
    if not series:
        raise NoduleSAMError(f"{folder}: holds no DICOM image slices")
    if series_uid is None and len(series) > 1:
        listing = "; ".join(f"{uid} ({len(s)} files, {s[0][1].get('Modality', '?')}, "
                            f"'{s[0][1].get('SeriesDescription', '')}')" for uid, s in series.items())
        raise NoduleSAMError(f"{folder}: holds {len(series)} series: {listing}. Choose one with "
                             "--series UID, or pass the folder of a single series")
    if series_uid is not None and series_uid not in series:
        raise NoduleSAMError(f"{folder}: has no series {series_uid}; it has {', '.join(series)}")
    return series[series_uid or next(iter(series))]


def _slice_axes(slices: list, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and normal unit vectors (LPS) of a series whose slices all share them."""
    orientations = np.array([_numbers(h, "ImageOrientationPatient", 6, f) for f, h in slices])
    differs = np.abs(orientations - orientations[0]).max(axis=1) > ORIENTATION_TOLERANCE
    if differs.any():
        other = slices[int(np.argmax(differs))][0].name
        raise NoduleSAMError(f"{folder}: slices are not all oriented alike ({other} differs from "
                             f"{slices[0][0].name} in ImageOrientationPatient): the folder mixes "
                             "acquisitions or reformats. Pass a folder with one series")
    row_dir, col_dir = orientations[0, :3], orientations[0, 3:]
    lengths = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if abs(lengths[0] - 1) > 0.01 or abs(lengths[1] - 1) > 0.01 or abs(row_dir @ col_dir) > 0.01:
        raise NoduleSAMError(f"{slices[0][0]}: ImageOrientationPatient {orientations[0].tolist()} "
                             "is not two perpendicular unit vectors: the file is damaged")
    row_dir, col_dir = row_dir / lengths[0], col_dir / lengths[1]
    normal = np.cross(row_dir, col_dir)
    return row_dir, col_dir, normal / np.linalg.norm(normal)


def _refuse_gantry_tilt(positions: np.ndarray, normal: np.ndarray, pixel_mm: float,
                        folder: Path) -> None:
    """Refuse slices (sorted along ``normal``) whose positions drift sideways: a gantry tilt
    shears the stack, and stacking the slices as if they were aligned would misplace every voxel
    by up to that drift."""
    offsets = positions - positions[0]
    along = offsets @ normal
    drift = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    if drift.max() > TILT_TOLERANCE_PX * pixel_mm:
        tilt_deg = np.degrees(np.arctan2(drift[-1], along[-1]))
        raise NoduleSAMError(
            f"{folder}: slice positions drift {drift.max():.1f} mm off the slice normal (gantry "
            f"tilt of about {tilt_deg:.1f} deg, or slices from different acquisitions); NoduleSAM "
            "does not resample. Load the series in 3D Slicer's DICOM module with 'Acquisition "
            "geometry regularization' on, harden the transform, save it as NRRD and segment that")


def _numbers(header, keyword: str, count: int, file: Path) -> np.ndarray:
    """The ``count`` finite numbers of DICOM attribute ``keyword``, or a one-line error."""
    value = header.get(keyword)
    if value is None or value == "":
        raise NoduleSAMError(f"{file}: has no {keyword}, which NoduleSAM needs on every CT slice "
                             "(geometry and HU rescale). Export the series again with all its tags")
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        numbers = np.array([float(v) for v in values])
    except (TypeError, ValueError):
        numbers = np.array([])
    if len(numbers) != count or not np.all(np.isfinite(numbers)):
        raise NoduleSAMError(f"{file}: {keyword} is {str(value)!r}, not {count} number(s): the "
                             "file is damaged or was edited. Export the series again")
    return numbers


def _check_decoder(ds, file: Path) -> None:
    """Refuse compressed pixel data that no installed pydicom plugin decodes, naming the syntax."""
    from pydicom.pixels import get_decoder

    uid = ds.file_meta.get("TransferSyntaxUID")
    if uid is None or not uid.is_transfer_syntax or not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise NoduleSAMError(f"{file}: pixel data are {uid.name} ({uid}), which no DICOM decoder "
                             "NoduleSAM uses can read; convert the series to an uncompressed or "
                             "lossless transfer syntax (e.g. gdcmconv --raw)") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise NoduleSAMError(f"{file}: pixel data are {uid.name} ({uid}): no decoder installed; "
                             f"install one: {missing}"
                             + (" (pip install python-gdcm)" if "gdcm" in missing else ""))


PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}  # the plane normal to LPS x, y, z


def axial_axes(ijk_to_lps: np.ndarray) -> tuple[tuple[int, int, int], float]:
    """Which voxel axis lies closest to each of LPS x, y, z, and the angle (degrees) of the slice
    plane's normal from z once k is that closest to z.

    Returns ``(axes, oblique_deg)``: ``axes[a]`` is the voxel axis (0 = i, 1 = j, 2 = k) that
    best follows LPS axis ``a``; ``(0, 1, 2)`` for an axial volume.
    """
    direction = ijk_to_lps[:3, :3] / np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    axes = max(itertools.permutations(range(3)),
               key=lambda p: sum(abs(direction[a, p[a]]) for a in range(3)))
    normal = np.cross(direction[:, axes[0]], direction[:, axes[1]])
    cosines = [abs(normal[2]) / np.linalg.norm(normal), abs(direction[2, axes[2]])]
    return axes, float(np.degrees(np.arccos(np.clip(min(cosines), 0.0, 1.0))))


def reorient_to_axial(volume: CTVolume) -> CTVolume:
    """The same voxels with k along S/I, i along L/R and j along A/P, when the volume's axes need
    permuting for that (a coronal or sagittal acquisition, a transposed axial one): no
    interpolation, and ``ijk_to_ras`` still maps every voxel to where it was. The permuted axes
    also point as in a supine, head-first axial DICOM series (L, P, S). An axial volume is
    returned unchanged (its voxel order is what a --boxes file or a label map refers to).
    """
    axes, _ = axial_axes(volume.ijk_to_lps)
    if axes == (0, 1, 2):
        return volume
    ijk_to_lps = volume.ijk_to_lps
    lps = np.eye(4)
    lps[:3, :3] = ijk_to_lps[:3, list(axes)]
    lps[:3, 3] = ijk_to_lps[:3, 3]
    hu = np.transpose(volume.hu, [2 - axes[2], 2 - axes[1], 2 - axes[0]])  # arrays are [k, j, i]
    flipped = []
    for a in range(3):
        if lps[a, a] < 0:
            lps[:3, 3] += (hu.shape[2 - a] - 1) * lps[:3, a]
            lps[:3, a] *= -1
            hu = np.flip(hu, axis=2 - a)
            flipped.append("ijk"[a])
    plane = PLANES[int(np.argmax(np.abs(volume.direction_lps[:, 2])))]
    plane = "transposed axial" if plane == "axial" else plane
    warning = (f"reoriented from {plane} to axial slices (voxel axes permuted"
               + (f", {' and '.join(flipped)} flipped" if flipped else "") + "; no interpolation): "
               "voxel indices (--boxes, the report's ijk) refer to the axial volume")
    return CTVolume(np.ascontiguousarray(hu), RAS_FROM_LPS @ lps, volume.source,
                    volume.warnings + [warning])


def check_ct(volume: CTVolume) -> None:
    """Refuse volumes NoduleSAM cannot segment: not 3D, empty, NaN, constant, not in HU, not
    axial (see :func:`reorient_to_axial`) or oblique; add warnings for slightly oblique and thick
    slices to ``volume.warnings``."""
    hu, name = volume.hu, volume.source or "volume"
    if hu.ndim != 3:
        raise NoduleSAMError(f"{name}: is {hu.ndim}D; NoduleSAM needs a 3D CT")
    if hu.size == 0:
        raise NoduleSAMError(f"{name}: is empty")
    if min(hu.shape) < 2:
        raise NoduleSAMError(f"{name}: has shape {hu.shape} (z, y, x): a 2D image. "
                             "NoduleSAM needs a 3D CT")
    _refuse_non_finite(hu, name)
    lo, hi = float(hu.min()), float(hu.max())
    if lo == hi:
        raise NoduleSAMError(f"{name}: is constant ({lo}); there is nothing to segment")
    low = _low_value(hu)
    if low > -500 or hi < 0:
        raise NoduleSAMError(
            f"{name}: values {lo:.0f}..{hi:.0f} (1 % below {low:.0f}) do not look like a CT in "
            "Hounsfield units (air and lung are below -500 HU). Is it another modality, or a CT "
            "saved without its rescale slope/intercept?")
    axes, oblique_deg = axial_axes(volume.ijk_to_lps)
    if axes != (0, 1, 2):
        plane = PLANES[int(np.argmax(np.abs(volume.direction_lps[:, 2])))]
        raise NoduleSAMError(f"{name}: slices are {plane}, not axial; NoduleSAM detects and "
                             "measures on axial slices. Reorient it to axial first (in 3D Slicer: "
                             "the Orient Scalar Volume module; the nodulesam command does it)")
    if oblique_deg > MAX_OBLIQUE_DEG:
        raise NoduleSAMError(f"{name}: slices are {oblique_deg:.0f} deg from axial (oblique, "
                             f"more than {MAX_OBLIQUE_DEG:.0f}); NoduleSAM detects and measures on "
                             "axial slices. Resample it to axial first (e.g. 3D Slicer's Resample "
                             "Scalar Volume onto an axial grid)")
    warnings = []
    if oblique_deg > OBLIQUE_WARNING_DEG:
        warnings.append(f"slices are {oblique_deg:.0f} deg from axial: diameters are measured in "
                        "the slice plane")
    if volume.spacing_zyx_mm[0] > THICK_SLICES_MM:
        warnings.append(f"slices are {volume.spacing_zyx_mm[0]:.1f} mm apart: nodules smaller "
                        "than that may be missed and volumes are coarse")
    volume.warnings.extend(w for w in warnings if w not in volume.warnings)


def _low_value(hu: np.ndarray) -> float:
    """The 1st percentile of the voxels, leaving out a fill value: the minimum, where it is below
    any air (-1010 HU) and covers 1 % or more (the corners outside the scanner's field of view,
    often -2048 or -3024 HU). A CT saved without its rescale intercept keeps such a fill below
    -500 while its air is near 0; air and lung put far more than 1 % of a chest CT, or of a crop
    of one around a nodule, below -500 HU."""
    sample = hu[::2, ::2, ::2] if hu.size > 1_000_000 else hu
    sample = sample[np.isfinite(sample)]
    fill = sample.min()
    if fill < -1010 and np.count_nonzero(sample == fill) >= 0.01 * sample.size:
        sample = sample[sample > fill]
    return float(np.percentile(sample, 1)) if sample.size else float(fill)


def window(hu: np.ndarray, lo_hu: float, hi_hu: float) -> np.ndarray:
    """Map HU linearly to [0, 1], clipping outside ``[lo_hu, hi_hu]``."""
    return np.clip((hu.astype(np.float32) - lo_hu) / (hi_hu - lo_hu), 0.0, 1.0)
