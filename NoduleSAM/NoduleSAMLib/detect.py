"""Run an nnU-Net v2 2D model over every slice of a CT: foreground probability and mask.

The results folder is nnU-Net's own layout (``dataset.json``, ``plans.json``,
``fold_N/<checkpoint>``), as ``nnUNetv2_train`` writes it or as the bundled detectors ship it
(weights only, half precision). Checkpoints are read with ``torch.load(weights_only=True)``.

On a whole-chest CT the network sees only the lung field's slices (``detection_region``), and
nnU-Net's in-plane resampling is OpenCV's (``resample_slices``); OpenVINO is an option
(``backend``). LIDC-IDRI-0314's 275 slices take about a fifth of the time they took on all of
each slice with nnU-Net's resampling (BENCHMARKS.md, "2026-12-03").
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import NoduleSAMError
from .lungs import lung_mask, shows_whole_chest
from .models import verify_file
from .openvino_backend import cached_model, cpu_threads, use_openvino, weights_digest
from .volume import CTVolume

SLICES_PER_BATCH = 8  # slices per nnU-Net call when progress is reported (Cancel checks between)
BACKENDS = ("auto", "torch", "openvino")
LUNG_MARGIN_MM = 10.0  # beyond the lung field: slices above and below, and in-plane
REGION_RULE = "lung field + 10 mm, grown to one tile; OpenCV resampling"  # how a CT is read: in cache keys


@dataclass
class Detection:
    """probability: float32 ``[z, y, x]`` foreground probability; mask: bool, its argmax;
    lungs: the lung mask the detector's region came from (``lungs.lung_mask``), or None where it
    was not computed (not a whole chest), so the candidate filters need not compute it again."""

    probability: np.ndarray
    mask: np.ndarray
    lungs: np.ndarray | None = None


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


def detection_region(hu: np.ndarray, spacing_zyx_mm, tile_mm, lungs: np.ndarray | None = None
                     ) -> tuple[slice, slice, slice] | None:
    """The part of a whole-chest CT that the detector runs on, or None for all of it.

    The slices with lung field (``lungs.lung_mask``), and ``LUNG_MARGIN_MM`` beyond. In-plane,
    the lung field's box with that margin, grown about its centre to one network tile
    (``tile_mm``, y and x) where the image allows: the network then sees as much of the chest as
    before, in one tile per slice where the whole slice needed four. The lung gate drops
    candidates outside the lungs anyway. None for volumes that do not show the whole chest
    (crops, VOIs) and where no lung field is found. ``lungs``: ``lung_mask(hu, spacing_zyx_mm)``
    where the caller has it.
    """
    if not shows_whole_chest(hu.shape, spacing_zyx_mm):
        return None
    lungs = lung_mask(hu, spacing_zyx_mm) if lungs is None else lungs
    if not lungs.any():
        return None
    region = []
    for axis, (size, mm, present) in enumerate(zip(hu.shape, spacing_zyx_mm,
                                                   ndimage.find_objects(lungs.astype(np.uint8))[0])):
        margin = int(np.ceil(LUNG_MARGIN_MM / mm))
        low, high = max(0, present.start - margin), min(size, present.stop + margin)
        if axis > 0:  # nnU-Net rounds the resampled size: one pixel less stays within the tile
            width = min(size, max(high - low, int(tile_mm[axis - 1] / mm) - 1))
            low = int(np.clip((low + high - width) // 2, 0, size - width))
            high = low + width
        region.append(slice(int(low), int(high)))
    return tuple(region)


def resample_slices(data, new_shape, current_spacing=None, new_spacing=None, order: int = 3) -> np.ndarray:
    """nnU-Net's in-plane resampling of a 2D configuration, by OpenCV: ``data`` ``[c, z, y, x]``
    to ``new_shape`` ``(z, y, x)`` (the same z), slice by slice, cubic (``order`` 3, the data),
    linear (1, the logits) or nearest (0, the preprocessor's nonzero mask), pixel centres mapped
    as scikit-image's ``resize`` that nnU-Net calls. About 20x faster than that; its cubic kernel
    is OpenCV's, not a spline (BENCHMARKS.md)."""
    import cv2

    data = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
    channels, depth = data.shape[:2]
    if tuple(new_shape[1:]) == data.shape[2:]:
        return data
    if new_shape[0] != depth:
        raise NoduleSAMError(f"a 2D detector cannot resample across slices ({depth} -> {new_shape[0]})")
    size = (int(new_shape[2]), int(new_shape[1]))  # OpenCV: (width, height)
    method = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR}.get(order, cv2.INTER_CUBIC)
    dtype = data.dtype if order == 0 else np.float32
    out = np.empty((channels, depth, size[1], size[0]), dtype)
    for c in range(channels):
        for z in range(depth):
            plane = np.ascontiguousarray(data[c, z], np.float32)
            out[c, z] = cv2.resize(plane, size, interpolation=method)
    return out


def fast_resampling(configuration_manager):
    """``configuration_manager`` (nnU-Net's) with ``resample_slices`` for the data, the logits
    and the nonzero mask."""
    from functools import partial

    base = type(configuration_manager)

    class FastResampling(base):
        resampling_fn_data = property(lambda self: partial(resample_slices, order=3))
        resampling_fn_probabilities = property(lambda self: partial(resample_slices, order=1))
        resampling_fn_seg = property(lambda self: partial(resample_slices, order=0))

    return FastResampling(configuration_manager.configuration)


def openvino_network(network, parameters: list[dict], patch_size, threads: int | None = None):
    """nnU-Net's ``network`` as a torch module that runs each fold's weights on OpenVINO.

    nnU-Net loads a fold's weights (``load_state_dict``) before predicting with them; here that
    call picks the fold's compiled model. Converted models are cached under
    ``models.cache_dir()/openvino``, keyed by a hash of the weights and OpenVINO's version.
    """
    import warnings

    import openvino as ov
    import torch

    from .models import cache_dir

    threads = cpu_threads(threads)
    version = ov.__version__.split("-")[0]
    compiled = {}
    for state in parameters:
        network.load_state_dict(state)

        def convert():
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit's deprecation notices, from the converter
                return ov.convert_model(network, example_input=torch.zeros(1, 1, *patch_size))

        path = cache_dir() / "openvino" / f"detector-{weights_digest(state)}-ov{version}.xml"
        core, model = cached_model(path, convert)
        compiled[id(state)] = core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    network.load_state_dict(parameters[0])

    class OpenVINOUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.current = compiled[id(parameters[0])]

        def load_state_dict(self, state, strict=True, assign=False):
            self.current = compiled[id(state)]

        def forward(self, x):
            return torch.from_numpy(self.current(np.ascontiguousarray(x.numpy()))[0].copy())

    return OpenVINOUNet()


class Detector:
    """An nnU-Net v2 2D model ready to predict.

    folder: the results folder (``.../nnUNetTrainer__nnUNetPlans__2d`` or a bundled model).
    folds: which ``fold_N`` to ensemble; checkpoint_name: file inside each fold folder.
    device: ``cpu`` or ``cuda``; mirroring: test-time mirroring (4x slower, slightly better).
    crop_to_lungs: on a whole-chest CT, run on ``detection_region`` only, else on every voxel.
    opencv_resampling: resample in-plane with OpenCV (``resample_slices``), else with nnU-Net's own.
    backend: ``auto`` (the default: OpenVINO on a CPU where it is installed, else torch),
      ``torch`` or ``openvino``; ``self.backend`` says which one runs. OpenVINO is about twice as
      fast per tile and within 0.003 of torch's probabilities. It runs on at least
      ``openvino_backend.MIN_THREADS`` threads, where its output no longer depends on the
      thread count, so a batch worker with one CPU reproduces ``segment``.
    """

    def __init__(self, folder: str | Path, folds=(0,), checkpoint_name: str | None = None,
                 device: str = "cpu", mirroring: bool = False, backend: str = "auto",
                 opencv_resampling: bool = True, crop_to_lungs: bool = True):
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
        if opencv_resampling:
            configuration_manager = fast_resampling(configuration_manager)
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
        self.backend = "openvino" if use_openvino(backend, BACKENDS, device == "cpu", "detector") else "torch"
        if self.backend == "openvino":
            network = openvino_network(network, parameters, configuration_manager.patch_size)
        self.predictor.manual_initialization(
            network, plans_manager, configuration_manager, parameters, dataset_json, trainer_name,
            first.get("inference_allowed_mirroring_axes"))
        self.tile_mm = [p * s for p, s in zip(configuration_manager.patch_size, configuration_manager.spacing)]
        self.crop_to_lungs = crop_to_lungs

    slices_per_batch = SLICES_PER_BATCH

    def predict(self, volume: CTVolume, progress=None) -> Detection:
        """Foreground probability and mask for every voxel of ``volume`` (HU, ``[z, y, x]``):
        the network's on ``detection_region``, 0 and False outside it.

        progress: optional callable(done_slices, total_slices), called after each batch of
          ``self.slices_per_batch`` slices; raising from it stops the prediction (a GUI's
          Cancel). The model is 2D, so batches give the result of one call over the volume.
        """
        spacing = [float(v) for v in volume.spacing_zyx_mm]
        lungs = (lung_mask(volume.hu, spacing)
                 if self.crop_to_lungs and shows_whole_chest(volume.hu.shape, spacing) else None)
        region = (detection_region(volume.hu, spacing, self.tile_mm, lungs) if lungs is not None
                  else None) or (slice(None),) * 3
        hu = volume.hu[region]
        depth = hu.shape[0]
        step = depth if progress is None else max(1, self.slices_per_batch)
        probability = np.zeros(volume.hu.shape, dtype=np.float32)
        mask = np.zeros(volume.hu.shape, dtype=bool)
        z_first = region[0].start or 0
        for z0 in range(0, depth, step):
            seg, probabilities = self.predictor.predict_single_npy_array(
                hu[None, z0:z0 + step].astype(np.float32), {"spacing": spacing}, None, None, True)
            rows = (slice(z_first + z0, z_first + min(z0 + step, depth)), region[1], region[2])
            probability[rows] = probabilities[1]
            mask[rows] = np.asarray(seg) > 0
            if progress is not None:
                progress(min(z0 + step, depth), depth)
        return Detection(probability, mask, lungs)
