"""Run an nnU-Net v2 2D model over every slice of a CT: foreground probability and mask.

The results folder is nnU-Net's own layout (``dataset.json``, ``plans.json``,
``fold_N/<checkpoint>``), as ``nnUNetv2_train`` writes it or as the bundled detectors ship it
(weights only, half precision). Checkpoints are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NoduleSAMError
from .models import verify_file
from .volume import CTVolume

SLICES_PER_BATCH = 8  # slices per nnU-Net call when progress is reported (Cancel checks between)


@dataclass
class Detection:
    """probability: float32 ``[z, y, x]`` foreground probability; mask: bool, its argmax."""

    probability: np.ndarray
    mask: np.ndarray


def _read_json(path: Path, folder: Path) -> dict:
    if not path.is_file():
        raise NoduleSAMError(f"{folder}: not an nnU-Net v2 results folder: {path.name} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise NoduleSAMError(f"{path}: broken JSON ({err})") from None


def load_checkpoint(path: Path) -> dict:
    """nnU-Net checkpoints hold numpy scalars in their logs; allow exactly those, nothing else."""
    import torch

    safe = [np.dtype, np.core.multiarray.scalar, np.ndarray, np.core.multiarray._reconstruct]
    safe += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated files and disallowed pickles raise several types
        raise NoduleSAMError(f"{path}: cannot load as a weights-only nnU-Net checkpoint "
                             f"({type(err).__name__}: {str(err).splitlines()[0]})") from None


class Detector:
    """An nnU-Net v2 2D model ready to predict.

    folder: the results folder (``.../nnUNetTrainer__nnUNetPlans__2d`` or a bundled model).
    folds: which ``fold_N`` to ensemble; checkpoint_name: file inside each fold folder.
    device: ``cpu`` or ``cuda``; mirroring: test-time mirroring (4x slower, slightly better).
    """

    def __init__(self, folder: str | Path, folds=(0,), checkpoint_name: str | None = None,
                 device: str = "cpu", mirroring: bool = False):
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.folder = folder = Path(folder)
        if not folder.is_dir():
            raise NoduleSAMError(f"{folder}: detector folder not found")
        dataset_json = _read_json(folder / "dataset.json", folder)
        plans = _read_json(folder / "plans.json", folder)
        card = json.loads((folder / "model.json").read_text()) if (folder / "model.json").is_file() else {}
        checkpoint_name = checkpoint_name or card.get("checkpoint", "checkpoint_final.pth")

        parameters, first = [], None
        for fold in folds:
            path = folder / f"fold_{fold}" / checkpoint_name
            if not path.is_file():
                present = sorted(p.name for p in folder.glob("fold_*"))
                raise NoduleSAMError(f"{folder}: {path.relative_to(folder)} is missing "
                                     f"(folds present: {', '.join(present) or 'none'})")
            pins = card.get("sha256")
            pinned = (pins or {}).get(f"fold_{fold}/{checkpoint_name}")
            if pins and not pinned:  # a card that pins some checkpoints must pin every one used
                raise NoduleSAMError(f"{path}: has no SHA-256 in {folder / 'model.json'}; add its "
                                     "hash there, or use a folder without a model card")
            if pinned:
                verify_file(path, pinned)
            checkpoint = load_checkpoint(path)
            if "network_weights" not in checkpoint:
                raise NoduleSAMError(f"{path}: not an nnU-Net checkpoint (no network_weights)")
            first = first or checkpoint
            parameters.append({k: v.float() for k, v in checkpoint["network_weights"].items()})

        configuration = first.get("init_args", {}).get("configuration", "2d")
        plans_manager = PlansManager(plans)
        if configuration not in plans.get("configurations", {}):
            raise NoduleSAMError(f"{folder}: plans.json has no configuration '{configuration}'")
        configuration_manager = plans_manager.get_configuration(configuration)
        if len(configuration_manager.patch_size) != 2:
            raise NoduleSAMError(f"{folder}: configuration '{configuration}' is "
                                 f"{len(configuration_manager.patch_size)}D; NoduleSAM's detector "
                                 "must be an nnU-Net v2 2D model")
        trainer_name = first.get("trainer_name", "nnUNetTrainer")
        try:
            trainer_class = recursive_find_trainer_class_by_name(trainer_name)
        except Exception:
            trainer_class = None
        if trainer_class is None:
            raise NoduleSAMError(f"{folder}: trainer class '{trainer_name}' is not installed")
        label_manager = plans_manager.get_label_manager(dataset_json)
        network = trainer_class.build_network_architecture(
            plans_manager, configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
            label_manager.num_segmentation_heads, enable_deep_supervision=False)
        try:
            network.load_state_dict(parameters[0])
        except RuntimeError as err:
            raise NoduleSAMError(f"{folder}: weights do not fit plans.json "
                                 f"({str(err).splitlines()[0]})") from None

        self.predictor = nnUNetPredictor(
            tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
            perform_everything_on_device=device != "cpu", device=torch.device(device),
            allow_tqdm=True)
        self.predictor.manual_initialization(
            network, plans_manager, configuration_manager, parameters, dataset_json, trainer_name,
            first.get("inference_allowed_mirroring_axes"))

    slices_per_batch = SLICES_PER_BATCH

    def predict(self, volume: CTVolume, progress=None) -> Detection:
        """Foreground probability and mask for every slice of ``volume`` (HU, ``[z, y, x]``).

        progress: optional callable(done_slices, total_slices), called after each batch of
          ``self.slices_per_batch`` slices; raising from it stops the prediction (a GUI's
          Cancel). The model is 2D, so batches give the result of one call over the volume.
        """
        spacing = [float(v) for v in volume.spacing_zyx_mm]
        depth = volume.hu.shape[0]
        step = depth if progress is None else max(1, self.slices_per_batch)
        probability, mask = [], []
        for z0 in range(0, depth, step):
            seg, probabilities = self.predictor.predict_single_npy_array(
                volume.hu[None, z0:z0 + step].astype(np.float32), {"spacing": spacing}, None, None,
                True)
            probability.append(np.asarray(probabilities[1], dtype=np.float32))
            mask.append(np.asarray(seg) > 0)
            if progress is not None:
                progress(min(z0 + step, depth), depth)
        return Detection(np.concatenate(probability), np.concatenate(mask))
