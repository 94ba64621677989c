"""Follow-up: two CTs of one patient. Register them, match their nodules, and measure the change.

1. **Registration** (SimpleITK). The current CT is registered to the prior: a rigid transform
   (``Euler3DTransform``), Mattes mutual information on both CTs clamped to a lung window and
   averaged to about 3 mm voxels, three resolution levels. An affine stage after it is kept only
   when asked for and only where it lowers the metric by ``AFFINE_MIN_GAIN``: the two scans of a
   patient differ by position and breathing, which an affine transform does not model well,
   and on the measured scenarios it did not lower the registration error (BENCHMARKS.md).
   The result maps a prior LPS point to the same anatomy's point in the current CT.
2. **Matching.** Each prior nodule's centroid is mapped into the current CT. A pair is possible
   when the mapped centroid lies within the gate (``GATE_MM``, or the larger nodule's radius if
   that is larger) of the current nodule's centroid *and* the two CTs look alike around it
   (``local_similarity``: the correlation of the lung-window HU in a 50 mm cube, at least
   ``MIN_LOCAL_SIMILARITY``). The distance gate alone matches any two nodules that sit at the
   same place in two different chests; the surroundings (vessels, fissures, chest wall) are
   the patient's own (measured: 0.99 and more for one patient; between patients mostly below
   0.5, at most 0.81). Among possible pairs the Hungarian assignment
   (``scipy.optimize.linear_sum_assignment``) minimises the total distance. Prior nodules left
   over are *resolved*, current ones *new*.
3. **Change.** Volume change, percent change, the volume doubling time
   ``VDT = dt * ln 2 / ln(V2 / V1)`` (days; negative when shrinking), the Lung-RADS v2022
   growth rule (mean diameter up by more than 1.5 mm within 12 months) and the follow-up
   Lung-RADS category with the prior (``management.lung_rads``). A volume change
   within ``STABLE_PCT`` is *stable* and gets no VDT: it is inside the measurement error.

This is decision support for a radiologist, not a diagnosis.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import management
from .errors import NoduleSAMError
from .volume import CTVolume

DISCLAIMER = ("Decision support for a radiologist, not a diagnosis: the matches, volumes, "
              "doubling times and categories are measurements to be checked on the images.")
LUNG_WINDOW_HU = (-1000.0, 150.0)   # clamp for registration and local similarity
REGISTRATION_SPACING_MM = 3.0       # both CTs are averaged to about this voxel size to register
AFFINE_MIN_GAIN = 0.02              # relative metric improvement an affine stage must bring
GATE_MM = 10.0                      # largest distance of matched centroids after registration
LOCAL_HALF_MM = 25.0                # half side of the cube of ``local_similarity``
# Correlation below which two places are not the same anatomy. Measured (BENCHMARKS.md, follow-up notes):
# a real CT against its moved, resampled copy gives 0.99 or more at each of its 6 nodules;
# LIDC-IDRI-0001, -0003 and -0314 against one another, at the place where the registration maps
# the other patient's nodules, give -0.32 to 0.81 (8 of 12 below 0.5). So the check removes most
# but not all look-alike places of another chest; it is set low because a real follow-up
# (another breath, dose and kernel) correlates less than a copy does, and a missed match (a
# growing nodule reported as resolved + new) is the worse error.
MIN_LOCAL_SIMILARITY = 0.5
# A volume change within this is "stable": the volume's own measurement error. Measured by
# segmenting real nodules in a CT and in a rigidly moved, resampled copy of it
# (benchmarks/compare.py, BENCHMARKS.md "Follow-up comparison"); the largest change there is
# well inside 25 %, the threshold the Fleischner Society and the ESTI give for volumetry.
STABLE_PCT = 25.0
DAYS_PER_MONTH = 365.25 / 12


@dataclass
class Finding:
    """One nodule of one scan, as its report lists it."""

    name: str
    label: int
    centroid_lps_mm: np.ndarray
    volume_mm3: float
    mean_diameter_mm: float
    record: dict = field(default_factory=dict)  # the report's whole record (for compare.json)

    @classmethod
    def from_record(cls, record: dict) -> Finding:
        if record.get("centroid_lps_mm") is None:
            raise NoduleSAMError(f"nodule '{record.get('name')}' has no centroid (empty mask); "
                                 "remove it from the report or segment it again")
        return cls(record["name"], int(record.get("label", 0)),
                   np.asarray(record["centroid_lps_mm"], float), float(record["volume_mm3"]),
                   float(record.get("mean_diameter_mm") or 0.0), record)

    def summary(self) -> dict:
        keys = ("name", "label", "volume_mm3", "mean_diameter_mm", "long_axis_mm", "short_axis_mm",
                "mean_hu", "centroid_lps_mm", "ijk", "type", "lung_rads")
        return {k: self.record[k] for k in keys if k in self.record} | {
            "name": self.name, "label": self.label, "volume_mm3": self.volume_mm3,
            "mean_diameter_mm": self.mean_diameter_mm,
            "centroid_lps_mm": self.centroid_lps_mm.tolist()}


@dataclass
class Scan:
    """One CT of the pair: the volume, its nodules, their label map (``[z, y, x]``, label n =
    nodule n; None: no figures) and the study date (None: unknown)."""

    volume: CTVolume
    findings: list[Finding]
    labelmap: np.ndarray | None = None
    date: dt.date | None = None
    date_from: str | None = None
    patient_id: str | None = None


def findings_from_labelmap(volume: CTVolume, labelmap: np.ndarray) -> list[Finding]:
    """The nodules of a label map (``[z, y, x]`` on ``volume``'s grid, label n = nodule n),
    measured as ``segment`` measures them."""
    from .measure import measure_nodule

    labels = [int(v) for v in np.unique(labelmap) if v > 0]
    return [Finding.from_record({"name": f"Nodule {label}", "label": label,
                                 **measure_nodule(volume, labelmap == label)}) for label in labels]


def to_sitk(array: np.ndarray, volume: CTVolume):
    """``array`` (``[z, y, x]``, on ``volume``'s grid) as a SimpleITK image with its geometry."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(v) for v in volume.spacing_ijk_mm])
    image.SetOrigin([float(v) for v in volume.origin_lps_mm])
    image.SetDirection([float(v) for v in volume.direction_lps.ravel()])
    return image


def lung_window(volume: CTVolume):
    import SimpleITK as sitk

    image = to_sitk(np.clip(volume.hu, *LUNG_WINDOW_HU).astype(np.float32), volume)
    return sitk.Cast(image, sitk.sitkFloat32)


def _coarse(image, spacing_mm: float):
    """``image`` averaged over blocks of whole voxels to about ``spacing_mm`` (``BinShrink``:
    fast, and the averaging is its anti-aliasing)."""
    import SimpleITK as sitk

    factors = [max(1, round(spacing_mm / s)) for s in image.GetSpacing()]
    return sitk.BinShrink(image, factors)


@dataclass
class Registration:
    """The transform from prior LPS mm to current LPS mm (a SimpleITK transform), its kind and
    the final metric of each stage run (Mattes MI: lower is better)."""

    transform: object
    kind: str
    metrics: dict
    seconds: float

    def to_current(self, points_lps) -> np.ndarray:
        points = np.atleast_2d(np.asarray(points_lps, float))
        return np.array([self.transform.TransformPoint([float(v) for v in p]) for p in points])

    def to_prior(self, points_lps) -> np.ndarray:
        inverse = self.transform.GetInverse()
        points = np.atleast_2d(np.asarray(points_lps, float))
        return np.array([inverse.TransformPoint([float(v) for v in p]) for p in points])

    def matrix(self) -> np.ndarray:
        """The 4x4 homogeneous matrix of the transform (prior LPS -> current LPS)."""
        corners = np.vstack([np.zeros(3), np.eye(3)])
        mapped = self.to_current(corners)
        out = np.eye(4)
        out[:3, 3] = mapped[0]
        out[:3, :3] = (mapped[1:] - mapped[0]).T
        return out

    def to_dict(self) -> dict:
        return {"kind": self.kind, "prior_to_current_lps": self.matrix().tolist(),
                "metrics": self.metrics, "seconds": round(self.seconds, 2)}


def _run_stage(fixed, moving, initial, seed: int):
    """One multi-resolution registration stage from ``initial``; the transform and its metric."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.05, seed)
    method.SetInterpolator(sitk.sitkLinear)
    # regular-step descent: plain gradient descent with a learning rate estimated once per
    # level overshot and diverged on a real CT moved by 8 mm and 4 degrees (TRE 37 mm)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                    numberOfIterations=200, relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([4.0, 2.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    result = method.Execute(fixed, moving)
    # every stage's final metric on the same (full) sample, so stages compare
    check = sitk.ImageRegistrationMethod()
    check.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    check.SetMetricSamplingStrategy(check.RANDOM)
    check.SetMetricSamplingPercentage(0.2, seed + 1)
    check.SetInterpolator(sitk.sitkLinear)
    check.SetInitialTransform(result)
    return result, float(check.MetricEvaluate(fixed, moving))


def register(prior: CTVolume, current: CTVolume, affine: bool = False, seed: int = 7) -> Registration:
    """Register ``current`` to ``prior`` (module docstring, step 1).

    affine: also try an affine stage after the rigid one; it is kept only if it lowers the
      metric by more than ``AFFINE_MIN_GAIN`` (relative).
    """
    import time

    import SimpleITK as sitk

    start = time.perf_counter()
    fixed = _coarse(lung_window(prior), REGISTRATION_SPACING_MM)
    moving = _coarse(lung_window(current), REGISTRATION_SPACING_MM)
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    rigid, rigid_metric = _run_stage(fixed, moving, initial, seed)
    metrics = {"rigid": rigid_metric}
    transform, kind = rigid, "rigid"
    if affine:
        rigid_euler = sitk.Euler3DTransform(sitk.CompositeTransform(rigid).GetNthTransform(0))
        start_affine = sitk.AffineTransform(3)
        start_affine.SetCenter(rigid_euler.GetCenter())
        start_affine.SetMatrix(rigid_euler.GetMatrix())
        start_affine.SetTranslation(rigid_euler.GetTranslation())
        candidate, affine_metric = _run_stage(fixed, moving, start_affine, seed)
        metrics["affine"] = affine_metric
        if affine_metric < rigid_metric - AFFINE_MIN_GAIN * abs(rigid_metric):
            transform, kind = candidate, "affine"
    return Registration(transform, kind, metrics, time.perf_counter() - start)


def _cube(centre_lps, half_mm: float, spacing_mm: float, direction_lps):
    """A cube of ``2 * half_mm`` side centred on ``centre_lps``, axes along ``direction_lps``:
    (size, spacing, origin, direction) for ``sitk.Resample``."""
    n = round(2 * half_mm / spacing_mm) + 1
    direction = np.asarray(direction_lps, float).reshape(3, 3)
    origin = np.asarray(centre_lps, float) - direction @ np.full(3, half_mm)
    return [n] * 3, [spacing_mm] * 3, origin.tolist(), direction.ravel().tolist()


def local_similarity(prior, current, transform, point_lps, half_mm: float = LOCAL_HALF_MM) -> float:
    """Pearson correlation of the two CTs' lung-window HU in a 1 mm cube around ``point_lps``
    (prior LPS mm), the current CT mapped through ``transform`` (prior -> current): near 1 for
    the same anatomy. ``prior`` and ``current`` are HU images (``to_sitk``)."""
    import SimpleITK as sitk

    size, spacing, origin, direction = _cube(point_lps, half_mm, 1.0, prior.GetDirection())
    a, b = (np.clip(sitk.GetArrayFromImage(sitk.Resample(
        image, size, how, sitk.sitkLinear, origin, spacing, direction, LUNG_WINDOW_HU[0],
        sitk.sitkFloat32)), *LUNG_WINDOW_HU).ravel()
        for image, how in ((prior, sitk.Transform()), (current, transform)))
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b / norm) if norm > 0 else 0.0


def gate_mm(prior: Finding, current: Finding) -> float:
    """How far apart two centroids may be to match: ``GATE_MM``, or the larger nodule's radius
    (a large nodule's centroid moves as it grows unevenly)."""
    return max(GATE_MM, max(prior.mean_diameter_mm, current.mean_diameter_mm) / 2)


def match(prior: Scan, current: Scan, registration: Registration) -> tuple[list, dict]:
    """Pairs ``(prior index, current index, distance mm, local similarity)`` (module docstring,
    step 2), and per prior index the similarity computed for it (None: no nodule in reach)."""
    from scipy.optimize import linear_sum_assignment

    if not prior.findings or not current.findings:
        return [], {}
    mapped = registration.to_current([f.centroid_lps_mm for f in prior.findings])
    targets = np.array([f.centroid_lps_mm for f in current.findings])
    distance = np.linalg.norm(mapped[:, None, :] - targets[None, :, :], axis=2)
    allowed = np.array([[distance[i, j] <= gate_mm(p, c) for j, c in enumerate(current.findings)]
                        for i, p in enumerate(prior.findings)])
    images = to_sitk(prior.volume.hu, prior.volume), to_sitk(current.volume.hu, current.volume)
    similarity = {i: (local_similarity(*images, registration.transform, finding.centroid_lps_mm)
                      if allowed[i].any() else None) for i, finding in enumerate(prior.findings)}
    for i, value in similarity.items():
        if value is not None and value < MIN_LOCAL_SIMILARITY:
            allowed[i] = False
    big = distance.max() * 10 + 1e6  # forbidden pairs cost more than any allowed assignment
    rows, cols = linear_sum_assignment(np.where(allowed, distance, big))
    pairs = [(int(i), int(j), float(distance[i, j]), similarity[i])
             for i, j in zip(rows, cols) if allowed[i, j]]
    return pairs, similarity


def interval_days(prior: dt.date | None, current: dt.date | None) -> int | None:
    if prior is None or current is None:
        return None
    return (current - prior).days


def change(prior: Finding, current: Finding, days: int | None) -> dict:
    """Volume change, percent change, trend, doubling time and the Lung-RADS growth rule."""
    v1, v2 = prior.volume_mm3, current.volume_mm3
    pct = 100.0 * (v2 - v1) / v1 if v1 > 0 else None
    if pct is None:
        trend = "growing" if v2 > 0 else "stable"
    elif abs(pct) <= STABLE_PCT:
        trend = "stable"
    else:
        trend = "growing" if pct > 0 else "shrinking"
    vdt = None
    if trend != "stable" and days is not None and days > 0 and v1 > 0 and v2 > 0:
        vdt = days * math.log(2) / math.log(v2 / v1)
    increase = current.mean_diameter_mm - prior.mean_diameter_mm
    return {"prior_volume_mm3": v1, "current_volume_mm3": v2, "volume_change_mm3": v2 - v1,
            "volume_change_pct": pct, "trend": trend, "vdt_days": vdt,
            "mean_diameter_change_mm": increase,
            "lung_rads_growth": lung_rads_growth(prior.mean_diameter_mm, current.mean_diameter_mm, days)}


def lung_rads_growth(prior_mm: float, current_mm: float, days: int | None) -> bool | None:
    """Lung-RADS v2022 growth (``management.GROWTH_MM``, ``GROWTH_WINDOW_MONTHS``): mean
    diameter, each rounded to one decimal, up by more than 1.5 mm within 12 months. None where
    it grew that much but the interval is unknown."""
    increase = management.round_half_up(
        management.round_half_up(current_mm, 1) - management.round_half_up(prior_mm, 1), 1)
    if increase <= management.GROWTH_MM:
        return False
    if days is None:
        return None
    return days / DAYS_PER_MONTH <= management.GROWTH_WINDOW_MONTHS


def lung_rads_follow_up(current: Finding, prior: Finding | None, days: int | None) -> dict:
    """The Lung-RADS v2022 category of a current nodule given the prior (``management.lung_rads``;
    ``prior`` None: a new nodule). None where the nodule has no type or the interval is unknown
    (the growth rule needs it)."""
    finding = management.finding_from_record(current.record)
    if finding is None or days is None or days <= 0:
        return {"lung_rads": None, "lung_rads_reason": None}
    before = management.Prior(
        None if prior is None else prior.mean_diameter_mm, days / DAYS_PER_MONTH,
        None if prior is None else prior.record.get("solid_component_mean_diameter_mm"))
    assessment = management.lung_rads(finding, before)
    return {"lung_rads": assessment.category, "lung_rads_reason": assessment.reason}


def compare(prior: Scan, current: Scan, registration: Registration | None = None,
            affine: bool = False) -> dict:
    """The whole comparison as ``compare.json`` holds it (without figures)."""
    registration = registration or register(prior.volume, current.volume, affine)
    days = interval_days(prior.date, current.date)
    messages = []
    if days is None:
        messages.append("no study dates (DICOM StudyDate or --prior-date/--current-date): no "
                        "doubling times")
    elif days <= 0:
        messages.append(f"the current CT is {'from the same day as' if days == 0 else 'older than'} "
                        "the prior: no doubling times; check the dates")
    if prior.patient_id and current.patient_id and prior.patient_id != current.patient_id:
        messages.append(f"the two CTs have different PatientIDs ({prior.patient_id}, "
                        f"{current.patient_id}): check that they are one patient's")
    pairs, similarity = match(prior, current, registration)
    matched_prior = {i for i, *_ in pairs}
    matched_current = {j for _, j, *_ in pairs}
    mapped = registration.to_current([f.centroid_lps_mm for f in prior.findings]) \
        if prior.findings else np.zeros((0, 3))
    matches = []
    for i, j, distance, local in pairs:
        p, c = prior.findings[i], current.findings[j]
        matches.append({"prior": p.summary(), "current": c.summary(),
                        "distance_mm": distance, "local_similarity": local,
                        **change(p, c, days if days and days > 0 else None),
                        "follow_up": lung_rads_follow_up(c, p, days)})
    resolved = [{"prior": prior.findings[i].summary(),
                 "expected_current_lps_mm": mapped[i].tolist(),
                 "local_similarity": similarity.get(i)}
                for i in range(len(prior.findings)) if i not in matched_prior]
    new = [{"current": current.findings[j].summary(),
            "follow_up": lung_rads_follow_up(current.findings[j], None, days)}
           for j in range(len(current.findings)) if j not in matched_current]
    return {
        "disclaimer": DISCLAIMER,
        "prior": scan_summary(prior), "current": scan_summary(current),
        "interval_days": days,
        "registration": registration.to_dict(),
        "settings": {"gate_mm": GATE_MM, "min_local_similarity": MIN_LOCAL_SIMILARITY,
                     "local_cube_mm": 2 * LOCAL_HALF_MM, "stable_pct": STABLE_PCT,
                     "lung_rads_growth_mm": management.GROWTH_MM},
        "messages": messages,
        "matches": matches, "new": new, "resolved": resolved,
    }


def scan_summary(scan: Scan) -> dict:
    return {"source": scan.volume.source, "patient_id": scan.patient_id,
            "date": scan.date.isoformat() if scan.date else None, "date_from": scan.date_from,
            "nodules": len(scan.findings)}


def parse_date(text: str, option: str) -> dt.date:
    """A ``YYYY-MM-DD`` (or DICOM ``YYYYMMDD``) date."""
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text.strip(), form).date()
        except ValueError:
            pass
    raise NoduleSAMError(f"{option} {text}: not a date; give it as YYYY-MM-DD")


def dicom_study(path: str | Path) -> tuple[dt.date | None, str | None]:
    """The StudyDate (else SeriesDate) and PatientID of a DICOM series folder, from the first
    slice that has them; (None, None) for image files."""
    import pydicom

    path = Path(path)
    if not path.is_dir():
        return None, None
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True,
                                     specific_tags=["StudyDate", "SeriesDate", "PatientID"])
        except (pydicom.errors.InvalidDicomError, OSError):  # e.g. the LIDC reader XML
            continue
        date = None
        for keyword in ("StudyDate", "SeriesDate"):
            value = str(header.get(keyword, "") or "")
            if value and date is None:
                try:
                    date = parse_date(value, keyword)
                except NoduleSAMError:
                    pass
        patient = str(header.get("PatientID", "") or "") or None
        if date is not None or patient is not None:
            return date, patient
    return None, None


def moved_copy(volume: CTVolume, rotation_deg, translation_mm, labels: np.ndarray | None = None,
               spacing_ijk_mm=None):
    """A real CT as it would look if the patient had moved: the anatomy rotated (degrees about
    the LPS x, y, z axes, around the volume's centre) and shifted (LPS mm), resampled (linear
    for HU, nearest for ``labels``) onto the same field of view, with ``spacing_ijk_mm`` voxels
    if given. For tests and benchmarks: the true prior -> current transform is returned.

    Returns (moved CTVolume, moved labels or None, the true ``sitk.Euler3DTransform`` mapping an
    original LPS point to where that anatomy lies in the copy).
    """
    import SimpleITK as sitk

    truth = sitk.Euler3DTransform()
    centre = np.ravel(volume.zyx_to_lps(np.array(volume.hu.shape) / 2 - 0.5))
    truth.SetCenter(centre.tolist())
    truth.SetRotation(*[math.radians(a) for a in rotation_deg])
    truth.SetTranslation([float(v) for v in translation_mm])
    image = to_sitk(volume.hu.astype(np.float32), volume)
    spacing = np.asarray(spacing_ijk_mm if spacing_ijk_mm is not None else volume.spacing_ijk_mm, float)
    size = np.maximum(np.round(np.array(image.GetSize()) * volume.spacing_ijk_mm / spacing), 1)
    grid = ([int(v) for v in size], image.GetOrigin(), spacing.tolist(), image.GetDirection())
    # Resample pulls: an output point x shows the original at truth^-1(x)
    inverse = truth.GetInverse()
    hu = sitk.Resample(image, grid[0], inverse, sitk.sitkLinear, grid[1], grid[2], grid[3], -1024.0)
    moved = CTVolume.from_lps(sitk.GetArrayFromImage(hu), spacing, volume.origin_lps_mm,
                              volume.direction_lps, volume.source + " (moved copy)")
    moved_labels = None
    if labels is not None:
        label_image = to_sitk(labels.astype(np.uint16), volume)
        moved_labels = sitk.GetArrayFromImage(sitk.Resample(
            label_image, grid[0], inverse, sitk.sitkNearestNeighbor, grid[1], grid[2], grid[3], 0))
    return moved, moved_labels, truth


def target_registration_error(registration: Registration, truth, points_lps) -> np.ndarray:
    """Distance (mm) between where ``registration`` and the true transform put each point."""
    points = np.atleast_2d(np.asarray(points_lps, float))
    expected = np.array([truth.TransformPoint([float(v) for v in p]) for p in points])
    return np.linalg.norm(registration.to_current(points) - expected, axis=1)


FIGURE_HALF_MM = 30.0   # each panel shows 60 mm x 60 mm around the nodule
FIGURE_PIXEL_MM = 0.5


def _axial_panel(image, transform, centre_lps, direction, interpolator, default):
    """The axial plane (of the prior's axes) through ``centre_lps`` (prior LPS mm), 60 mm wide,
    sampled from ``image`` through ``transform`` (prior -> that image's LPS)."""
    import SimpleITK as sitk

    n = round(2 * FIGURE_HALF_MM / FIGURE_PIXEL_MM) + 1
    axes = np.asarray(direction, float).reshape(3, 3)
    origin = np.asarray(centre_lps, float) - axes @ np.array([FIGURE_HALF_MM, FIGURE_HALF_MM, 0])
    plane = sitk.Resample(image, [n, n, 1], transform, interpolator, origin.tolist(),
                          [FIGURE_PIXEL_MM] * 3, axes.ravel().tolist(), default)
    return sitk.GetArrayFromImage(plane)[0]


def write_figures(comparison: dict, prior: Scan, current: Scan, registration: Registration,
                  folder: str | Path) -> None:
    """One PNG per match, new and resolved nodule: the prior (left) and the current CT mapped
    onto the prior's axes (right), the same 60 mm axial plane through the nodule, contours drawn.
    Adds each entry's ``figure`` (the file name, relative to ``folder``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    from .outputs import _atomic_target

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for side, scan in (("prior", prior), ("current", current)):
        labels = scan.labelmap if scan.labelmap is not None else np.zeros(scan.volume.hu.shape, np.uint16)
        images[side] = (to_sitk(scan.volume.hu.astype(np.float32), scan.volume),
                        to_sitk(labels.astype(np.uint16), scan.volume))
    transforms = {"prior": sitk.Transform(), "current": registration.transform}
    direction = prior.volume.direction_lps
    days = comparison.get("interval_days")
    for kind in ("matches", "new", "resolved"):
        for number, entry in enumerate(comparison[kind], 1):
            if "prior" in entry:
                centre = entry["prior"]["centroid_lps_mm"]
            else:
                centre = np.ravel(registration.to_prior(entry["current"]["centroid_lps_mm"]))
            figure, axes = plt.subplots(1, 2, figsize=(8, 4.4))
            for axis, side in zip(axes, ("prior", "current")):
                hu_image, label_image = images[side]
                hu = _axial_panel(hu_image, transforms[side], centre, direction, sitk.sitkLinear, -1024.0)
                labels = _axial_panel(label_image, transforms[side], centre, direction,
                                      sitk.sitkNearestNeighbor, 0)
                axis.imshow(hu, cmap="gray", vmin=-1350, vmax=150)
                finding = entry.get(side)
                if finding is not None and (labels == finding["label"]).any():
                    axis.contour(labels == finding["label"], levels=[0.5], colors=["#e6194b"],
                                 linewidths=1.2)
                date = comparison[side]["date"] or "date unknown"
                text = (f"{finding['name']}: {finding['volume_mm3']:.0f} mm³, mean "
                        f"{finding['mean_diameter_mm']:.1f} mm" if finding else "no nodule here")
                axis.set_title(f"{side} ({date})\n{text}", fontsize=9)
                axis.axis("off")
            if kind == "matches":
                vdt = entry["vdt_days"]
                summary = (f"{entry['trend']}: {entry['volume_change_pct']:+.0f} % volume"
                           + (f", doubling time {vdt:.0f} days" if vdt is not None else "")
                           + (f" over {days} days" if days else ""))
            else:
                summary = "new nodule" if kind == "new" else "not found in the current CT"
            figure.suptitle(summary + " (decision support, not a diagnosis)", fontsize=9)
            figure.tight_layout(rect=(0, 0, 1, 0.94))
            name = f"{kind}_{number}.png"
            path = folder / name
            partial = _atomic_target(path)
            figure.savefig(partial, dpi=100, format="png")
            plt.close(figure)
            partial.replace(path)
            entry["figure"] = name
