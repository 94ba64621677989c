"""Train and package the candidate classifier ``nodule-fpr`` (false-positive reduction).

    nodulesam-train train-fpr [--out out/fpr] [--dest NoduleSAM/Resources/Models/nodule-fpr]

Examples are cubes (``NoduleSAMLib.fpr.extract_patch``) from the training scans only
(``scans.TRAIN_SCANS``; never a held-out scan):

- positives: the scans' own reference lesions (many jittered cubes each), and real nodules of
  the LIDC VOI ``train`` split pasted in 3D into their lungs (``paste.py``), so each nodule is
  seen in real surroundings. The patients of the training and held-out scans are left out of
  the VOI pool.
- negatives: the detector's candidates on those scans that touch no labelled lesion (hard
  negatives; components of its mask and of its probability above 0.25, so that more of them
  are mined), the blob filter's candidates that touch none (``NoduleSAMLib.blobs``), vessel-like points (lung voxels above -200 HU), the pleura and hilum (points on
  the lung boundary) and plain parenchyma.
- validation: nodules of the VOI ``val`` split pasted the same way, against a seeded 15 % of
  the negatives. It picks the epoch; the operating points come from the held-out scans' ``val``
  FROC (``evaluate-detection --split val``), not from here.

Everything is seeded. Progress and the per-epoch validation AUC go to ``<out>/train_fpr.log``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from . import scans as scans_mod
from .detector_data import default_lidc_dir, read_cases
from .train_detector import RunLog


def _jittered(geometry, spacing, rng, amount: float = 0.15, scale: float = 0.2):
    """The cube moved by up to ``amount`` of its extent and resized by up to exp(+-``scale``),
    as the detector's masks are neither centred nor sized exactly on a nodule."""
    from NoduleSAMLib.fpr import PatchGeometry

    shift_mm = rng.uniform(-amount, amount, 3) * geometry.extent_mm
    return PatchGeometry(tuple(np.asarray(geometry.center_zyx) + shift_mm / np.asarray(spacing, float)),
                         float(geometry.extent_mm * np.exp(rng.uniform(-scale, scale))))


class _Examples:
    """Collected cubes: patches (float16), log extents, labels, and where each came from."""

    def __init__(self):
        self.patches, self.extents, self.labels, self.kinds = [], [], [], []

    def add(self, hu, spacing, geometry, label: int, kind: str):
        from NoduleSAMLib.fpr import extract_patch

        self.patches.append(extract_patch(hu, spacing, geometry).astype(np.float16))
        self.extents.append(np.log(geometry.extent_mm))
        self.labels.append(label)
        self.kinds.append(kind)

    def arrays(self):
        return (np.stack(self.patches), np.asarray(self.extents, np.float32),
                np.asarray(self.labels, np.float32), np.asarray(self.kinds))


def lesion_cubes(scan, out: _Examples, rng, repeats: int = 30) -> None:
    """Jittered cubes of the scan's own reference lesions (positives)."""
    from NoduleSAMLib.fpr import mask_geometry

    spacing = scan.volume.spacing_zyx_mm
    for lesion in scan.lesions:
        geometry = mask_geometry(scan.labels == lesion.value, spacing)
        for _ in range(repeats):
            out.add(scan.volume.hu, spacing, _jittered(geometry, spacing, rng), 1, "real lesion")


def _candidate_cubes(scan, candidates, train: _Examples, val: _Examples, rng, jitters: int, kind: str) -> int:
    """Jittered cubes of ``candidates`` as negatives of ``kind`` (15 % of them to validation)."""
    from NoduleSAMLib.fpr import mask_geometry

    hu, spacing = scan.volume.hu, scan.volume.spacing_zyx_mm
    for candidate in candidates:
        z0, _, y0, _, x0, _ = candidate.box_ijk
        geometry = mask_geometry(candidate.detector_mask, spacing, (z0, y0, x0))
        target = val if rng.random() < 0.15 else train
        for _ in range(jitters):
            target.add(hu, spacing, _jittered(geometry, spacing, rng, 0.1, 0.1), 0, kind)
    return len(candidates)


def detector_fp_cubes(scan, detection, near_label, train: _Examples, val: _Examples, rng,
                      jitters: int = 3) -> int:
    """Cubes of the detector's candidates that touch no label (hard negatives): components of its
    mask and of its probability above 0.25. Returns how many candidates were used."""
    from NoduleSAMLib.boxes import candidates_from_mask

    def off_labels(candidate):
        z0, z1, y0, y1, x0, x1 = candidate.box_ijk
        return not near_label[z0:z1, y0:y1, x0:x1][candidate.detector_mask].any()

    spacing = scan.volume.spacing_zyx_mm
    candidates = [c for mask in (detection.mask, detection.probability > 0.25)
                  for c in candidates_from_mask(mask, detection.probability, spacing, 5.0) if off_labels(c)]
    return _candidate_cubes(scan, candidates, train, val, rng, jitters, "detector FP")


def blob_fp_cubes(scan, near_label, train: _Examples, val: _Examples, rng, jitters: int = 2) -> int:
    """Cubes of the blob filter's candidates (``NoduleSAMLib.blobs``) that touch no label: the
    vessel crossings and other round look-alikes it proposes (hard negatives)."""
    from NoduleSAMLib.blobs import blob_candidates
    from NoduleSAMLib.lungs import lung_mask

    hu, spacing = scan.volume.hu, scan.volume.spacing_zyx_mm
    candidates = blob_candidates(hu, spacing, lung_mask(hu, spacing), avoid=near_label)
    return _candidate_cubes(scan, candidates, train, val, rng, jitters, "blob FP")


BACKGROUND_COUNTS = {"vessel": 900, "lung boundary": 350, "parenchyma": 150}


def background_cubes(scan, near_label, train: _Examples, val: _Examples, rng,
                     counts: dict = BACKGROUND_COUNTS) -> None:
    """Negatives at random points: vessels (lung voxels above -200 HU), the lung boundary (pleura,
    hilum, diaphragm) and plain parenchyma, with extents drawn log-uniformly from 3-25 mm."""
    from scipy import ndimage

    from NoduleSAMLib.fpr import PatchGeometry
    from NoduleSAMLib.lungs import lung_mask

    hu, spacing = scan.volume.hu, scan.volume.spacing_zyx_mm
    lungs = lung_mask(hu, spacing) & ~near_label
    boundary = lungs & ~ndimage.binary_erosion(lungs, iterations=2)
    kinds = {"vessel": lungs & (hu > -200), "lung boundary": boundary, "parenchyma": lungs & (hu < -750)}
    for kind, where in kinds.items():
        points = np.argwhere(where)
        for index in rng.choice(len(points), min(counts[kind], len(points)), replace=False):
            extent = float(np.exp(rng.uniform(np.log(3.0), np.log(25.0))))
            target = val if rng.random() < 0.15 else train
            target.add(hu, spacing, PatchGeometry(tuple(float(v) for v in points[index]), extent), 0, kind)


def pasted_cubes(scan, cases, lidc_dir: Path, out: _Examples, rng, jitters: int = 3,
                 per_canvas: int = 25) -> int:
    """VOI nodules pasted into the scan's lungs, ``per_canvas`` at a time, and their cubes
    (positives; ``jitters`` jittered cubes each, or the exact cube when ``jitters`` is 0).
    Returns how many were placed."""
    from NoduleSAMLib.fpr import mask_geometry

    from .paste import pasted_copies, read_voi

    hu, spacing = scan.volume.hu, scan.volume.spacing_zyx_mm
    # label values above the scan's own, which the pastes keep 10 mm away from
    nodules = [(value, read_voi(lidc_dir, case)) for value, case in enumerate(cases, start=1000)]
    placed_total = 0
    for canvas, labels, placed in pasted_copies(hu, scan.labels, spacing, nodules, per_canvas, rng):
        for value, _ in placed:
            geometry = mask_geometry(labels == value, spacing)
            for _ in range(max(1, jitters)):
                out.add(canvas, spacing, _jittered(geometry, spacing, rng) if jitters else geometry, 1, "pasted VOI")
        placed_total += len(placed)
    return placed_total


def collect(detector_folder: Path, lidc_dir: Path, cache_dir: Path, seed: int, log,
            pastes_per_nodule: int = 2, thick_factor: int = 0) -> dict:
    """Training and validation cubes from the training scans (see the module docstring).

    thick_factor: also use each training scan with that many times thicker slices
    (``scans.thicker``) as a further background: its lesions, its own detector and blob-filter
    false positives, its background points, and each train nodule pasted once more into it.
    """
    from scipy import ndimage

    from NoduleSAMLib.detect import Detector

    from .detection_cache import cached_detection

    rng = np.random.default_rng(seed)
    excluded = set(scans_mod.TRAIN_SCANS) | set(scans_mod.HELD_OUT_PATIENTS)
    cases = [c for c in read_cases(lidc_dir) if c["patient_id"] not in excluded]
    pools = {split: sorted((c for c in cases if c["split"] == split), key=lambda c: c["case_id"])
             for split in ("train", "val")}
    detector = Detector(detector_folder)
    detector.predictor.allow_tqdm = False
    train, val = _Examples(), _Examples()
    for number, name in enumerate(scans_mod.TRAIN_SCANS):
        original = scans_mod.load_scan(name, lidc_dir)
        share = {split: pool[number::len(scans_mod.TRAIN_SCANS)] for split, pool in pools.items()}
        backgrounds = [(original, pastes_per_nodule)]
        if thick_factor > 1:
            backgrounds.append((scans_mod.thicker(original, thick_factor), 1))
        for scan, pastes in backgrounds:
            near_label = ndimage.binary_dilation(scan.labels > 0, iterations=3)
            lesion_cubes(scan, train, rng)
            detection = cached_detection(detector, detector_folder, scan.volume, cache_dir)
            hard = detector_fp_cubes(scan, detection, near_label, train, val, rng)
            blobs = blob_fp_cubes(scan, near_label, train, val, rng)
            background_cubes(scan, near_label, train, val, rng)
            placed_train = pasted_cubes(scan, share["train"] * pastes, lidc_dir, train, rng)
            placed_val = pasted_cubes(scan, share["val"], lidc_dir, val, rng, jitters=0)
            log(f"{scan.name} ({scan.volume.spacing_zyx_mm[0]:.1f} mm slices): {len(scan.lesions)} lesions, "
                f"{hard} detector and {blobs} blob-filter false positives, pasted "
                f"{placed_train} train / {placed_val} val VOI nodules")
    return {"train": train.arrays(), "val": val.arrays()}


def _augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips along each axis and an in-plane transpose, chosen per batch."""
    for axis in (1, 2, 3):
        if rng.random() < 0.5:
            batch = np.flip(batch, axis)
    if rng.random() < 0.5:
        batch = np.swapaxes(batch, 2, 3)
    return np.ascontiguousarray(batch)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from scipy.stats import mannwhitneyu

    positive, negative = scores[labels > 0.5], scores[labels <= 0.5]
    if not len(positive) or not len(negative):
        return float("nan")
    return float(mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


def train(data: dict, epochs: int, steps_per_epoch: int, batch_size: int, seed: int, log,
          lr: float = 2e-3):
    """Train the classifier with class-balanced batches; returns (best state dict, history)."""
    import torch

    from NoduleSAMLib.fpr import build_network

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    patches, extents, labels, _ = data["train"]
    vpatches, vextents, vlabels, _ = data["val"]
    network = build_network()
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=epochs * steps_per_epoch)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    positive, negative = np.flatnonzero(labels > 0.5), np.flatnonzero(labels <= 0.5)
    best, history = None, []
    for epoch in range(epochs):
        network.train()
        start, losses = time.perf_counter(), []
        for _ in range(steps_per_epoch):
            index = np.concatenate([rng.choice(positive, batch_size // 2), rng.choice(negative, batch_size // 2)])
            x = torch.from_numpy(_augment(patches[index].astype(np.float32)[:, None], rng))
            x = x + 0.02 * torch.randn_like(x)
            e = torch.from_numpy(extents[index])
            y = torch.from_numpy(labels[index])
            loss = loss_fn(network(x, e), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
        scores = predict(network, vpatches, vextents)
        entry = {"epoch": epoch, "loss": float(np.mean(losses)), "val_auc": auc(vlabels, scores),
                 "seconds": time.perf_counter() - start}
        history.append(entry)
        log(f"epoch {epoch}: loss {entry['loss']:.4f}, val AUC {entry['val_auc']:.4f} ({entry['seconds']:.0f} s)")
        if best is None or entry["val_auc"] >= best[0]:
            best = (entry["val_auc"], {k: v.detach().clone() for k, v in network.state_dict().items()}, epoch)
    return best[1], history, best[2]


def predict(network, patches: np.ndarray, extents: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch

    network.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(patches), batch):
            x = torch.from_numpy(patches[start:start + batch].astype(np.float32)[:, None])
            out.append(torch.sigmoid(network(x, torch.from_numpy(extents[start:start + batch]))).numpy())
    network.train()
    return np.concatenate(out) if out else np.zeros(0)


def package(state: dict, dest: Path, card: dict) -> Path:
    """Write the half-precision weights and ``model.json`` (SHA-256 pinned) into ``dest``."""
    import torch

    from NoduleSAMLib.models import sha256_file

    dest.mkdir(parents=True, exist_ok=True)
    checkpoint = dest / "fpr.pth"
    partial = dest / ".fpr.pth.partial"
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}, partial)
    partial.replace(checkpoint)
    card = dict(card, checkpoint=checkpoint.name, sha256={checkpoint.name: sha256_file(checkpoint)})
    (dest / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    return dest


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", type=Path, default=Path("out/fpr"), help="work folder (log, cubes)")
    parser.add_argument("--dest", type=Path, default=Path("NoduleSAM/Resources/Models/nodule-fpr"),
                        help="packaged model folder")
    parser.add_argument("--detector", default="nodule-detector",
                        help="detector whose false positives are the hard negatives")
    parser.add_argument("--lidc-dir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=Path("out/detcache"),
                        help="detector outputs cached here")
    parser.add_argument("--seed", type=int, default=20241201)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=120, help="steps per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--thick-factor", type=int, default=2,
                        help="also train on each scan with this many times thicker slices (0: off)")
    return parser


def main(args) -> int:
    import torch

    from NoduleSAMLib.models import detector_folder

    lidc_dir = Path(args.lidc_dir or default_lidc_dir())
    log = RunLog(args.out / "train_fpr.log")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from .detection_cache import detector_key

    folder = detector_folder(args.detector)
    # per detector (its false positives) and background set
    thick = f"_thick{args.thick_factor}" if args.thick_factor > 1 else ""
    from NoduleSAMLib.blobs import RULE

    cubes = args.out / f"cubes_{args.seed}_{detector_key(folder)}{thick}_blobs{RULE}.npz"
    if cubes.is_file():
        with np.load(cubes) as saved:
            data = {split: tuple(saved[f"{split}_{n}"] for n in range(4)) for split in ("train", "val")}
        log(f"cubes: {cubes}")
    else:
        start = time.perf_counter()
        data = collect(folder, lidc_dir, args.cache_dir, args.seed, log, thick_factor=args.thick_factor)
        np.savez(cubes, **{f"{split}_{n}": a for split, arrays in data.items() for n, a in enumerate(arrays)})
        log(f"collected in {time.perf_counter() - start:.0f} s")
    for split, (_, _, labels, kinds) in data.items():
        kinds_count = {k: int((kinds == k).sum()) for k in np.unique(kinds)}
        log(f"{split}: {int(labels.sum())} positive / {int((labels == 0).sum())} negative cubes {kinds_count}")
    start = time.perf_counter()
    state, history, epoch = train(data, args.epochs, args.steps, args.batch_size, args.seed, log)
    seconds = time.perf_counter() - start
    log(f"trained in {seconds:.0f} s; best epoch {epoch}")
    card = {"name": "nodule-fpr", "kind": "candidate classifier",
            "training": {"scans": list(scans_mod.TRAIN_SCANS), "detector": args.detector,
                         "thick_factor": args.thick_factor,
                         "seed": args.seed, "epochs": args.epochs, "steps_per_epoch": args.steps,
                         "batch_size": args.batch_size, "best_epoch": epoch, "seconds": round(seconds),
                         "torch": torch.__version__,
                         "cubes": {split: {"positive": int(d[2].sum()), "negative": int((d[2] == 0).sum())}
                                   for split, d in data.items()},
                         "history": history},
            # placeholders until `evaluate-detection --split val --calibrate` reads them off the FROC
            "operating_points": {name: {"threshold": 0.5, "calibrated": False}
                                 for name in ("high", "balanced", "specific")}}
    package(state, args.dest, card)
    log(f"packaged -> {args.dest}")
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train-fpr", help="train and package the candidate classifier nodule-fpr")
    add_arguments(parser)
    parser.set_defaults(func=main)
