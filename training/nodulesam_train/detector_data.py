"""Training set of the bundled 2D nodule detector (``nodule-detector``).

The detector runs slice by slice on whole chest CTs, so it is trained on full 512 x 512 axial
slices (HU) of the two complete LIDC-IDRI series in ``<lidc>/scans`` (LIDC-IDRI-0001 and
LIDC-IDRI-0003, labels = ``<pid>.consensus50.nii.gz > 0``).  Two series hold only a handful of
nodules, so real nodules of the VOI ``train`` split are pasted into the lung fields of those
slices (copy-paste augmentation):

1. A lung mask per slice from HU: air (< -400 HU) that is not connected to the image border
   (outside air), the largest components kept, holes filled, eroded a little.
2. For each pasted nodule, one axial slice of a VOI (any slice whose consensus area is at least
   ``min_area_fraction`` of the VOI's largest slice, so several slices per nodule) is resampled
   to the target slice's pixel spacing (``cv2.resize``: linear for HU, nearest for the mask),
   optionally flipped / rotated by 90 degree steps.
3. A location is drawn at random such that the nodule's (dilated) footprint lies inside the lung
   mask and away from real nodules and earlier pastes.
4. Blending with a feathered alpha: the consensus mask is dilated and Gaussian-blurred, and
   ``out = alpha * voi + (1 - alpha) * slice``; the label is the pasted consensus mask.

Slices with 1-3 pasted nodules, the slices with the series' own nodules and plain lung slices
without any nodule (negatives: vessels must stay background) make up the set. Everything is
driven by one seed, so the set is reproducible.
"""
from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

DEFAULT_SEED = 20240601
SCAN_IDS = ("LIDC-IDRI-0001", "LIDC-IDRI-0003")


def default_lidc_dir() -> Path:
    """``$NODULESAM_LIDC_DIR`` or ``<repo>/../shared/data/lidc``."""
    env = os.environ.get("NODULESAM_LIDC_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lidc"


@dataclass
class Slice2D:
    """One 2D training sample: HU image ``[y, x]``, binary mask, pixel spacing ``(sy, sx)`` mm."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float]
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_dicom_series(folder: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a DICOM series with SimpleITK -> (HU array ``[z, y, x]`` int16, spacing ``(sz, sy, sx)``).

    Slices come sorted by position (ascending z for these axial series)."""
    import SimpleITK as sitk

    folder = str(folder)
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(folder)
    if not series:
        raise FileNotFoundError(f"no DICOM series in {folder}")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder, series[0]))
    img = reader.Execute()
    arr = np.clip(sitk.GetArrayFromImage(img), -32768, 32767).astype(np.int16)
    sx, sy, sz = img.GetSpacing()
    return arr, (float(sz), float(sy), float(sx))


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    sx, sy, sz = img.GetSpacing()[:3]
    return sitk.GetArrayFromImage(img), (float(sz), float(sy), float(sx))


def load_scan(lidc_dir: Path, pid: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """HU ``[z, y, x]``, binary reference mask, spacing ``(sz, sy, sx)`` of one full series."""
    series_dirs = sorted({os.path.dirname(p) for p in glob.glob(str(lidc_dir / "scans" / pid / "*" / "*" / "*.dcm"))})
    if not series_dirs:
        raise FileNotFoundError(f"no DICOM files for {pid} under {lidc_dir / 'scans'}")
    hu, spacing = read_dicom_series(series_dirs[0])
    lab, _ = read_nifti(lidc_dir / "scans" / f"{pid}.consensus50.nii.gz")
    if lab.shape != hu.shape:
        raise ValueError(f"{pid}: label shape {lab.shape} != image shape {hu.shape}")
    return hu, (lab > 0).astype(np.uint8), spacing


def read_cases(lidc_dir: Path) -> list[dict]:
    with open(lidc_dir / "voi" / "cases.csv", newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------
# Lung mask and pasting
# --------------------------------------------------------------------------------------------
def lung_mask_2d(hu: np.ndarray, threshold: float = -400.0, min_area: int = 500, erode_px: int = 2) -> np.ndarray:
    """Lung fields of one axial HU slice (uint8 {0,1}).

    Air below ``threshold`` that does not touch the image border (i.e. inside the body), the
    (at most two) largest components above ``min_area`` pixels, holes filled, eroded by
    ``erode_px``."""
    import cv2
    from scipy import ndimage as ndi

    air = hu < threshold
    lab, n = ndi.label(air)
    if n == 0:
        return np.zeros(hu.shape, np.uint8)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    sizes = ndi.sum(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    sizes[border[border > 0] - 1] = 0
    order = np.argsort(sizes)[::-1][:2]
    keep = [i + 1 for i in order if sizes[i] >= min_area]
    lung = np.isin(lab, keep)
    lung = ndi.binary_fill_holes(lung)
    lung = lung.astype(np.uint8)
    if erode_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode_px + 1, 2 * erode_px + 1))
        lung = cv2.erode(lung, k)
    return lung


@dataclass
class VoiPatch:
    case_id: str
    k: int
    image: np.ndarray  # float32 HU [y, x] at VOI spacing
    mask: np.ndarray  # uint8
    spacing: tuple[float, float]  # (sy, sx)
    diameter_mm: float


def voi_patches(lidc_dir: Path, case: dict, min_area_fraction: float = 0.5,
                max_slices: int = 4, rng: np.random.Generator | None = None) -> list[VoiPatch]:
    """Several axial slices of one VOI: those whose consensus area is >= ``min_area_fraction``
    of the largest one (at most ``max_slices``, spread evenly)."""
    folder = lidc_dir / "voi" / case["case_id"]
    img, sp = read_nifti(folder / "image.nii.gz")
    msk, _ = read_nifti(folder / "consensus50.nii.gz")
    msk = (msk > 0).astype(np.uint8)
    areas = msk.reshape(msk.shape[0], -1).sum(1)
    if areas.max() == 0:
        return []
    ks = np.flatnonzero(areas >= max(1, min_area_fraction * areas.max()))
    if len(ks) > max_slices:
        ks = ks[np.linspace(0, len(ks) - 1, max_slices).round().astype(int)]
    return [VoiPatch(case["case_id"], int(k), img[k].astype(np.float32), msk[k], (sp[1], sp[2]),
                     float(case.get("diameter_mm") or 0.0)) for k in ks]


def _disk(r: int) -> np.ndarray:
    import cv2

    r = max(0, int(r))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def paste_nodule(image: np.ndarray, label: np.ndarray, allowed: np.ndarray, patch: VoiPatch,
                 spacing: tuple[float, float], rng: np.random.Generator, tries: int = 60,
                 feather_px: float = 1.5, dilate_px: int = 2) -> bool:
    """Paste ``patch`` into ``image`` / ``label`` (in place) somewhere inside ``allowed``.

    ``allowed`` (uint8) is updated so later pastes keep their distance. Returns True on success."""
    import cv2

    fy, fx = patch.spacing[0] / spacing[0], patch.spacing[1] / spacing[1]
    h, w = patch.image.shape
    nh, nw = max(3, int(round(h * fy))), max(3, int(round(w * fx)))
    src = cv2.resize(patch.image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    msk = cv2.resize(patch.mask, (nw, nh), interpolation=cv2.INTER_NEAREST)
    # random flips / 90 degree rotations for variety
    if rng.random() < 0.5:
        src, msk = src[:, ::-1], msk[:, ::-1]
    rot = int(rng.integers(4))
    src, msk = np.ascontiguousarray(np.rot90(src, rot)), np.ascontiguousarray(np.rot90(msk, rot))
    if msk.sum() == 0:
        return False
    ys, xs = np.nonzero(msk)
    pad = dilate_px + int(np.ceil(3 * feather_px)) + 1
    y0, y1 = max(0, ys.min() - pad), min(msk.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(msk.shape[1], xs.max() + pad + 1)
    src, msk = src[y0:y1, x0:x1], msk[y0:y1, x0:x1]
    ph, pw = msk.shape
    support = cv2.dilate(msk, _disk(dilate_px))
    alpha = cv2.GaussianBlur(support.astype(np.float32), (0, 0), feather_px) if feather_px > 0 else support.astype(np.float32)
    alpha = np.clip(alpha, 0, 1)
    alpha[msk > 0] = 1.0
    foot = (alpha > 0.01).astype(np.uint8)

    H, W = image.shape
    cand = np.argwhere(allowed > 0)
    if len(cand) == 0 or ph >= H or pw >= W:
        return False
    for _ in range(tries):
        cy, cx = cand[rng.integers(len(cand))]
        ty, tx = int(cy) - ph // 2, int(cx) - pw // 2
        if ty < 0 or tx < 0 or ty + ph > H or tx + pw > W:
            continue
        region = allowed[ty:ty + ph, tx:tx + pw]
        if np.any(region[foot > 0] == 0):
            continue
        tgt = image[ty:ty + ph, tx:tx + pw].astype(np.float32)
        image[ty:ty + ph, tx:tx + pw] = np.round(alpha * src + (1 - alpha) * tgt).astype(image.dtype)
        label[ty:ty + ph, tx:tx + pw] = np.maximum(label[ty:ty + ph, tx:tx + pw], msk)
        # keep later pastes away from this one
        keep_out = cv2.dilate(foot, _disk(4))
        allowed[ty:ty + ph, tx:tx + pw][keep_out > 0] = 0
        return True
    return False


# --------------------------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------------------------
@dataclass
class DetectorDataConfig:
    seed: int = DEFAULT_SEED
    n_paste_slices: int = 360  # slices that receive 1-3 pasted nodules (both scans together)
    n_negative_slices: int = 120  # lung slices kept without any nodule
    max_nodules_per_slice: int = 3
    min_lung_area_px: int = 4000  # a slice "contains lung" above this many lung pixels
    voi_split: str = "train"
    min_voi_diameter_mm: float = 3.0
    voi_slices_per_case: int = 4
    keep_real_positive: bool = True  # keep every slice with a real (consensus) nodule
    scans: tuple = SCAN_IDS  # whole CTs whose slices are used (scans.load_scan names)
    # scan -> slice indices where an earlier detector had false positives: all are kept as
    # negatives (hard-negative mining); their real lesions, if any, stay labelled
    hard_negatives: dict = field(default_factory=dict)
    excluded_patients: tuple = ()  # VOI patients never pasted (held-out scans' patients)


def iter_detector_slices(lidc_dir: Path | None = None, cfg: DetectorDataConfig | None = None,
                         log=print) -> Iterator[Slice2D]:
    """Yield the detector's training slices (deterministic for a given config)."""
    from scipy import ndimage as ndi

    lidc_dir = Path(lidc_dir) if lidc_dir else default_lidc_dir()
    cfg = cfg or DetectorDataConfig()
    rng = np.random.default_rng(cfg.seed)

    # VOI pool: train split, not the two full-scan patients (their nodules are already real)
    cases = [c for c in read_cases(lidc_dir) if c["split"] == cfg.voi_split
             and c["patient_id"] not in set(cfg.scans) | set(cfg.excluded_patients)
             and float(c["diameter_mm"] or 0) >= cfg.min_voi_diameter_mm]
    cases.sort(key=lambda c: c["case_id"])
    n_pastes_needed = int(cfg.n_paste_slices * (1 + cfg.max_nodules_per_slice) / 2 * 1.1)
    order = rng.permutation(len(cases))
    pool: list[VoiPatch] = []
    for i in order:
        pool.extend(voi_patches(lidc_dir, cases[i], max_slices=cfg.voi_slices_per_case))
        if len(pool) >= n_pastes_needed and len({p.case_id for p in pool}) >= min(len(cases), 150):
            break
    log(f"VOI pool: {len(pool)} slices from {len({p.case_id for p in pool})} train cases")
    pool_order = list(rng.permutation(len(pool)))

    def next_patch() -> VoiPatch:
        nonlocal pool_order
        if not pool_order:
            pool_order = list(rng.permutation(len(pool)))
        return pool[pool_order.pop()]

    per_scan_paste = [cfg.n_paste_slices // len(cfg.scans)] * len(cfg.scans)
    per_scan_paste[0] += cfg.n_paste_slices - sum(per_scan_paste)
    per_scan_neg = [cfg.n_negative_slices // len(cfg.scans)] * len(cfg.scans)
    per_scan_neg[0] += cfg.n_negative_slices - sum(per_scan_neg)

    for si, pid in enumerate(cfg.scans):
        if pid in SCAN_IDS:
            hu, lab, (sz, sy, sx) = load_scan(lidc_dir, pid)
        else:
            from .scans import load_scan as load_whole_ct

            whole = load_whole_ct(pid, lidc_dir)
            hu = np.clip(np.round(whole.volume.hu), -32768, 32767).astype(np.int16)
            lab = (whole.labels > 0).astype(np.uint8)
            sz, sy, sx = (float(v) for v in whole.volume.spacing_zyx_mm)
        spacing = (sy, sx)
        lungs = np.stack([lung_mask_2d(s) for s in hu])
        lung_area = lungs.reshape(len(lungs), -1).sum(1)
        lung_slices = np.flatnonzero(lung_area >= cfg.min_lung_area_px)
        positive = np.flatnonzero(lab.reshape(len(lab), -1).any(1))
        log(f"{pid}: {len(hu)} slices, {len(lung_slices)} with lung, {len(positive)} with a real nodule")
        # real nodule slices, as they are
        if cfg.keep_real_positive:
            for k in positive:
                yield Slice2D(f"{pid}_k{k:03d}_real", hu[k].copy(), lab[k].copy(), spacing,
                              {"scan": pid, "k": int(k), "kind": "real"})
        # a dilated version of the real labels in 3D so negatives never sit next to a real nodule
        near_real = ndi.binary_dilation(lab > 0, iterations=2).any(axis=(1, 2)) if lab.any() else np.zeros(len(lab), bool)
        neg_pool = np.array([k for k in lung_slices if not near_real[k]])
        neg = rng.choice(neg_pool, size=min(per_scan_neg[si], len(neg_pool)), replace=False) if len(neg_pool) else []
        for k in sorted(neg):
            yield Slice2D(f"{pid}_k{k:03d}_neg", hu[k].copy(), np.zeros_like(lab[k]), spacing,
                          {"scan": pid, "k": int(k), "kind": "negative"})
        for k in sorted(set(cfg.hard_negatives.get(pid, ())) - set(int(v) for v in positive)):
            yield Slice2D(f"{pid}_k{k:03d}_hard", hu[k].copy(), lab[k].copy(), spacing,
                          {"scan": pid, "k": int(k), "kind": "hard negative"})
        # pasted slices: drawn with replacement among lung slices (each draw pastes other nodules)
        ks = np.sort(rng.choice(lung_slices, size=per_scan_paste[si], replace=True))
        counts: dict[int, int] = {}
        for k in ks:
            k = int(k)
            counts[k] = counts.get(k, 0) + 1
            img = hu[k].copy()
            msk = lab[k].copy()
            import cv2

            allowed = lungs[k].copy()
            if msk.any():
                allowed[cv2.dilate(msk, _disk(6)) > 0] = 0
            n_nod = int(rng.integers(1, cfg.max_nodules_per_slice + 1))
            pasted = []
            for _ in range(n_nod):
                p = next_patch()
                if paste_nodule(img, msk, allowed, p, spacing, rng):
                    pasted.append(f"{p.case_id}:k{p.k}")
            if not pasted:
                continue
            yield Slice2D(f"{pid}_k{k:03d}_p{counts[k]}", img, msk, spacing,
                          {"scan": pid, "k": k, "kind": "pasted", "nodules": pasted})


def build_detector_slices(lidc_dir: Path | None = None, cfg: DetectorDataConfig | None = None, log=print) -> list[Slice2D]:
    return list(iter_detector_slices(lidc_dir, cfg, log=log))


def voi_central_slice(lidc_dir: Path, case_id: str) -> Slice2D:
    """The central (largest-consensus) axial slice of one VOI case."""
    folder = Path(lidc_dir) / "voi" / case_id
    img, sp = read_nifti(folder / "image.nii.gz")
    msk, _ = read_nifti(folder / "consensus50.nii.gz")
    msk = (msk > 0).astype(np.uint8)
    k = int(np.argmax(msk.reshape(msk.shape[0], -1).sum(1)))
    return Slice2D(case_id, img[k].astype(np.int16), msk[k], (sp[1], sp[2]), {"case_id": case_id, "k": k})


def voi_central_slices(lidc_dir: Path | None = None, split: str = "train", limit: int | None = None,
                       seed: int = DEFAULT_SEED) -> list[Slice2D]:
    """Central (largest-consensus) axial slice of each VOI of ``split`` (for the ``nodule-voi``
    model and for tests). ``limit`` picks that many cases at random (seeded)."""
    lidc_dir = Path(lidc_dir) if lidc_dir else default_lidc_dir()
    cases = sorted((c for c in read_cases(lidc_dir) if c["split"] == split), key=lambda c: c["case_id"])
    if limit is not None and limit < len(cases):
        rng = np.random.default_rng(seed)
        cases = [cases[i] for i in sorted(rng.choice(len(cases), size=limit, replace=False))]
    return [voi_central_slice(lidc_dir, c["case_id"]) for c in cases]
