"""False-positive reduction: a small 3D CNN scores each candidate's crop of the CT.

The detector works slice by slice, so a vessel seen in cross-section looks like a nodule to it.
In 3D a vessel is a tube and a nodule a blob; this stage looks at a cube around each candidate
and gives it a probability of being a nodule, which becomes the candidate's score. The user's
operating point (``high``, ``balanced``, ``specific``) is a threshold on that score, read off the
validation FROC and stored with the model (``model.json``).

The cube: ``PATCH`` voxels per side, isotropic, centred on the candidate's detector mask, with a
side of ``FOV_FACTOR`` times the candidate's largest extent (at least ``MIN_FOV_MM``, at most
``MAX_FOV_MM``), so a 4 mm nodule and a 60 mm tumour both fill about half of it. HU are clipped
to [-1000, 500] and scaled to about [-1, 1]. The extent itself (log mm) is a second input, since
the rescaled cube no longer shows the size.

The score is the mean probability over the cube's 16 mirror images (flips along z, y and x, and
the in-plane transpose: the augmentations of training), so it does not depend on which way a
scan is stored (a cube whose first view scores below ``SCREEN_BELOW``, far under every operating
point, keeps that view's score); on the ``val`` FROC of the held-out scans this raised the CPM of the classifier
from 0.665 (8 flips) and 0.60-0.64 (one view) to 0.684 (BENCHMARKS.md).

On a CPU with OpenVINO installed (``pip install "nodulesam[fast]"``) the network runs compiled
by OpenVINO: the same probabilities (within 1e-5) in about a fifth of torch's time, which
matters with several hundred candidates per CT (``backend``; BENCHMARKS.md).
"""
from __future__ import annotations

import itertools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NoduleSAMError
from .openvino_backend import cached_model, cpu_threads, use_openvino
from .settings import SENSITIVITIES, CandidateSettings

PATCH = 32
FOV_FACTOR = 2.0
MIN_FOV_MM = 32.0
MAX_FOV_MM = 128.0
HU_RANGE = (-1000.0, 500.0)
# the views of a batch [n, 1, z, y, x] that the score averages over: (flipped axes, y/x transposed)
MIRRORS = [(axes, transpose) for n in range(4) for axes in itertools.combinations((2, 3, 4), n)
           for transpose in (False, True)]
# On the val FROC, `balanced` (1 FP per scan) keeps nearly the sensitivity of `high` (2 FP per
# scan) with half its false alarms, so it is the default (BENCHMARKS.md says how it was chosen).
DEFAULT_SENSITIVITY = CandidateSettings.sensitivity
# Cubes whose first view scores below this keep that score and are not scored 16 times: on the
# val FROC of the held-out scans it left the CPM of the bundled classifier at 0.769-0.770 while
# 93 % of the candidates, mostly vessel points of the blob filter, needed one view instead of 16.
SCREEN_BELOW = 0.2


def build_network():
    """The classifier: three 3D conv stages (8-16-32-64 channels), global pooling, and a linear
    head over the pooled features plus the log extent. About 0.2 M parameters."""
    import torch
    from torch import nn

    def block(c_in, c_out, convs=2):
        layers = []
        for n in range(convs):
            layers += [nn.Conv3d(c_in if n == 0 else c_out, c_out, 3, padding=1, bias=False),
                       nn.BatchNorm3d(c_out), nn.ReLU(inplace=True)]
        return layers

    class CandidateNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                *block(1, 8, 1), nn.MaxPool3d(2),      # 32 -> 16
                *block(8, 16), nn.MaxPool3d(2),        # 16 -> 8
                *block(16, 32), nn.MaxPool3d(2),       # 8 -> 4
                *block(32, 64), nn.AdaptiveAvgPool3d(1))
            self.head = nn.Sequential(nn.Linear(64 + 1, 32), nn.ReLU(inplace=True), nn.Linear(32, 1))

        def forward(self, patch, log_extent):
            pooled = self.features(patch).flatten(1)
            return self.head(torch.cat([pooled, log_extent[:, None]], 1))[:, 0]

    return CandidateNet()


@dataclass
class PatchGeometry:
    """Where a candidate's cube lies: its centre in voxel indices ``(z, y, x)`` and its extent."""

    center_zyx: tuple[float, float, float]
    extent_mm: float

    @property
    def fov_mm(self) -> float:
        return float(np.clip(FOV_FACTOR * self.extent_mm, MIN_FOV_MM, MAX_FOV_MM))


def candidate_geometry(candidate, spacing_zyx_mm) -> PatchGeometry:
    """The cube of a candidate: around its detector mask, or its box when it has none."""
    z0, z1, y0, y1, x0, x1 = candidate.box_ijk
    if candidate.detector_mask is not None and candidate.detector_mask.any():
        return mask_geometry(candidate.detector_mask, spacing_zyx_mm, (z0, y0, x0))
    spacing = np.asarray(spacing_zyx_mm, float)
    sizes = np.array([z1 - z0, y1 - y0, x1 - x0]) * spacing
    return PatchGeometry(((z0 + z1 - 1) / 2, (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2), float(sizes.max()))


def mask_geometry(mask: np.ndarray, spacing_zyx_mm, offset_zyx=(0, 0, 0)) -> PatchGeometry:
    """The cube of a bool mask ``[z, y, x]`` whose voxel (0, 0, 0) is ``offset_zyx`` in the volume."""
    points = np.argwhere(mask)
    spacing = np.asarray(spacing_zyx_mm, float)
    extent = ((points.max(axis=0) - points.min(axis=0) + 1) * spacing).max()
    center = points.mean(axis=0) + np.asarray(offset_zyx, float)
    return PatchGeometry(tuple(float(v) for v in center), float(extent))


def extract_patch(hu: np.ndarray, spacing_zyx_mm, geometry: PatchGeometry) -> np.ndarray:
    """The candidate's cube, float32 ``[PATCH, PATCH, PATCH]`` (z, y, x), scaled HU.

    Sampled with linear interpolation on an isotropic grid of side ``geometry.fov_mm``; outside
    the volume counts as air.
    """
    from scipy import ndimage

    step_mm = geometry.fov_mm / PATCH
    offsets = (np.arange(PATCH) - (PATCH - 1) / 2) * step_mm
    axes = [geometry.center_zyx[a] + offsets / float(spacing_zyx_mm[a]) for a in range(3)]
    grid = np.meshgrid(*axes, indexing="ij")
    values = ndimage.map_coordinates(hu, grid, order=1, mode="constant", cval=-1024.0,
                                     prefilter=False)
    return normalise_hu(values)


def mirror(batch, axes, transpose: bool):
    """A view of a torch batch ``[n, 1, z, y, x]``: flipped along ``axes``, y and x swapped if
    ``transpose``."""
    import torch

    view = torch.flip(batch, axes) if axes else batch
    return view.transpose(3, 4) if transpose else view


def mirror_array(batch: np.ndarray, axes, transpose: bool) -> np.ndarray:
    """``mirror`` for a numpy batch ``[n, 1, z, y, x]`` (the OpenVINO backend's input)."""
    view = np.flip(batch, axes) if axes else batch
    return np.ascontiguousarray(view.swapaxes(3, 4) if transpose else view)


class OpenVINONetwork:
    """The classifier compiled by OpenVINO for the CPU: logits of numpy batches.

    The converted model is cached under ``models.cache_dir()/openvino``, keyed by the
    checkpoint's SHA-256 (``key``), since converting takes seconds and loading it a tenth."""

    def __init__(self, network, key: str, threads: int | None = None):
        import openvino as ov
        import torch

        from .models import cache_dir

        def convert():
            example = (torch.zeros(1, 1, PATCH, PATCH, PATCH), torch.zeros(1))
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit's deprecation notices, from the converter
                return ov.convert_model(network, example_input=example)  # the batch stays dynamic

        path = cache_dir() / "openvino" / f"fpr-{key[:16]}-ov{ov.__version__.split('-')[0]}.xml"
        core, model = cached_model(path, convert)
        self.compiled = core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": cpu_threads(threads), "INFERENCE_PRECISION_HINT": "f32"})

    def __call__(self, patches: np.ndarray, log_extents: np.ndarray) -> np.ndarray:
        return self.compiled((patches, log_extents))[0]


BACKENDS = ("auto", "torch", "openvino")


def normalise_hu(hu: np.ndarray) -> np.ndarray:
    low, high = HU_RANGE
    return ((np.clip(hu, low, high) - (low + high) / 2) / ((high - low) / 2)).astype(np.float32)


class FalsePositiveReducer:
    """A bundled or user candidate classifier, loaded verified (SHA-256, ``weights_only``).

    folder: holds ``model.json`` (``checkpoint``, ``sha256``, ``operating_points``: sensitivity
      name -> threshold on the score) and the checkpoint (float16 state dict).
    backend: ``auto`` (OpenVINO on a CPU where it is installed, else torch), ``torch`` or
      ``openvino``; ``self.backend`` says which one runs.
    """

    def __init__(self, folder: str | Path, device: str = "cpu", backend: str = "auto"):
        import torch

        from .models import load_weights

        self.folder = folder = Path(folder)
        card_path = folder / "model.json"
        if not card_path.is_file():
            raise NoduleSAMError(f"{folder}: not a NoduleSAM candidate classifier (model.json is missing)")
        try:
            self.card = json.loads(card_path.read_text())
            checkpoint = folder / self.card["checkpoint"]
            sha256 = self.card["sha256"][self.card["checkpoint"]]
            self.operating_points = {name: float(self.card["operating_points"][name]["threshold"])
                                     for name in SENSITIVITIES}
        except (KeyError, TypeError, ValueError) as err:
            raise NoduleSAMError(f"{card_path}: broken model card ({err})") from None
        state = load_weights(checkpoint, sha256)
        self.network = build_network()
        try:
            self.network.load_state_dict({k: v.float() for k, v in state.items()})
        except (RuntimeError, AttributeError) as err:
            raise NoduleSAMError(f"{checkpoint}: weights do not fit the candidate classifier "
                                 f"({str(err).splitlines()[0]})") from None
        self.device = torch.device(device)
        self.network.to(self.device).eval()
        self.compiled = self._compiled(backend)
        self.backend = "torch" if self.compiled is None else "openvino"

    def _compiled(self, backend: str):
        """The OpenVINO network for ``backend``, or None for torch's own."""
        if not use_openvino(backend, BACKENDS, self.device.type == "cpu", "classifier"):
            return None
        return OpenVINONetwork(self.network, self.card["sha256"][self.card["checkpoint"]])

    def threshold(self, sensitivity: str) -> float:
        """The score threshold of an operating point (``high``, ``balanced``, ``specific``)."""
        if sensitivity not in self.operating_points:
            raise NoduleSAMError(f"unknown sensitivity '{sensitivity}'; choose one of "
                                 f"{', '.join(SENSITIVITIES)}")
        return self.operating_points[sensitivity]

    def score_patches(self, patches: np.ndarray, log_extents: np.ndarray, batch: int = 256,
                      screen: float = SCREEN_BELOW) -> np.ndarray:
        """Nodule probabilities of ``patches`` ``[n, PATCH, PATCH, PATCH]`` (``extract_patch``):
        the mean over the cube's 16 mirror images (``MIRRORS``), for the cubes whose first view
        (the cube as it is) scores at least ``screen``; the others keep that first view's
        probability (0: every cube gets the 16-view mean)."""
        if len(patches) == 0:
            return np.zeros(0, np.float32)
        first = self._probabilities(patches, log_extents, MIRRORS[:1], batch)[:, 0]
        rescored = np.nonzero(first >= screen)[0]
        scores = first.copy()
        if len(rescored):
            others = self._probabilities(patches[rescored], np.asarray(log_extents)[rescored], MIRRORS[1:], batch)
            scores[rescored] = (first[rescored] + others.sum(axis=1)) / len(MIRRORS)
        return scores

    def _probabilities(self, patches, log_extents, views, batch: int) -> np.ndarray:
        """The network's probability of each patch in each of ``views`` (``MIRRORS`` items):
        float32 ``[n, len(views)]``, on the OpenVINO network or torch's."""
        import torch

        out = np.zeros((len(patches), len(views)), np.float32)
        with torch.inference_mode():
            for start in range(0, len(patches), batch):
                x = np.ascontiguousarray(patches[start:start + batch], np.float32)[:, None]
                e = np.asarray(log_extents[start:start + batch], np.float32)
                if self.compiled is None:
                    x_t, e_t = torch.from_numpy(x).to(self.device), torch.from_numpy(e).to(self.device)
                for k, (axes, transpose) in enumerate(views):  # one flipped copy alive at a time
                    if self.compiled is not None:
                        logits = self.compiled(mirror_array(x, axes, transpose), e)
                    else:
                        logits = self.network(mirror(x_t, axes, transpose), e_t).cpu().numpy()
                    out[start:start + len(x), k] = 1 / (1 + np.exp(-logits))
        return out

    def score(self, hu: np.ndarray, spacing_zyx_mm, candidates) -> np.ndarray:
        """The nodule probability of each candidate of a CT (HU ``[z, y, x]``)."""
        geometries = [candidate_geometry(c, spacing_zyx_mm) for c in candidates]
        patches = np.stack([extract_patch(hu, spacing_zyx_mm, g) for g in geometries]) if geometries else np.zeros((0,))
        return self.score_patches(patches, np.log([g.extent_mm for g in geometries]))
