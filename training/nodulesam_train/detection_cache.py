"""Detector outputs cached on disk, so that every FROC row and filter reuses one detector run.

The key is the detector folder's checkpoint hashes, how the detector reads a CT (which part,
resampled how: ``detect.REGION_RULE``), its backend (torch or OpenVINO) and a fingerprint of the CT's voxels, so a changed
model, rule or (e.g. pasted) volume is never served a stale probability.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def detector_key(folder: Path) -> str:
    """A short hash of a detector folder's pinned checkpoints (or of its checkpoint files)."""
    folder = Path(folder)
    card = folder / "model.json"
    from NoduleSAMLib.detect import REGION_RULE

    digest = hashlib.blake2b(digest_size=8)
    digest.update(REGION_RULE.encode())
    if card.is_file():
        digest.update(json.dumps(json.loads(card.read_text()).get("sha256", {}), sort_keys=True).encode())
    for path in sorted(folder.glob("fold_*/*.pth")):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()


def volume_key(hu: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(np.ascontiguousarray(hu).tobytes())
    digest.update(np.asarray(hu.shape).tobytes())
    return digest.hexdigest()


def cached_detection(detector, folder: Path, volume, cache_dir: Path | None):
    """``detector.predict(volume)``, read from ``cache_dir`` when it was run before."""
    from NoduleSAMLib.detect import Detection

    if cache_dir is None:
        return detector.predict(volume)
    backend = getattr(detector, "backend", "torch")  # OpenVINO's probabilities differ by <= 0.003
    tag = "" if backend == "torch" else f"-{backend}"
    path = Path(cache_dir) / f"{detector_key(folder)}{tag}_{volume_key(volume.hu)}.npz"
    if path.is_file():
        with np.load(path) as data:
            probability = data["probability"].astype(np.float32)
            return Detection(probability, data["mask"].astype(bool))
    detection = detector.predict(volume)
    # stored in half precision; served the same way on the first run as on every later one
    detection = Detection(detection.probability.astype(np.float16).astype(np.float32), detection.mask)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez_compressed(partial, probability=detection.probability.astype(np.float16),
                        mask=detection.mask)
    partial.replace(path)
    return detection
