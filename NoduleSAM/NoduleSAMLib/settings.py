"""Every engine setting and its default, in one place.

The command line (its option defaults), the Slicer module (its parameter node) and the training
package all read them from here, so a default changes in one line. ``Settings`` is what one run
uses: the models, how detections become candidates (``CandidateSettings``) and how candidates
are refined (``RefineSettings``). Defaults were chosen on the LIDC VOIs and the `val` FROC
(docs/architecture.md, BENCHMARKS.md).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace

from .errors import NoduleSAMError

SENSITIVITIES = ("high", "balanced", "specific")  # operating points of the candidate classifier
DEVICES = ("auto", "cpu", "cuda")
ENCODERS = ("auto", "torch", "openvino")


@dataclass(frozen=True)
class CandidateSettings:
    """How a detector mask becomes the candidate list (``boxes.py``, ``Pipeline.candidate_stages``).

    min_volume_mm3: smallest detected component kept (a 3 mm sphere is 14 mm3; LIDC counts
      nodules from 3 mm).
    expansion, pad_px: each side of a prompt box moves out by this fraction of the box size plus
      this many pixels (a tight box plus 2 px is what LiteMedSAM segments best on ~44 px crops).
    min_in_lungs: drop candidates with less than this fraction inside the lung fields (0: keep).
    min_depth_ratio: drop detections much thinner in z than wide (``boxes.round_enough``; 0: keep).
    blobs: with a classifier, add the blob filter's candidates (``blobs.py``).
    sensitivity: the classifier's operating point, one of ``SENSITIVITIES``.
    """

    min_volume_mm3: float = 15.0
    expansion: float = 0.0
    pad_px: float = 2.0
    min_in_lungs: float = 0.5
    min_depth_ratio: float = 0.35
    blobs: bool = True
    sensitivity: str = "balanced"


@dataclass
class RefineSettings:
    """Knobs of refinement (defaults chosen on LIDC VOIs, see docs/architecture.md).

    window_hu: HU window mapped to the model's [0, 255] input.
    crop_margin_px: context around the prompt box on each side of the (square) crop.
    min_crop_px: smallest crop side, so small nodules keep some context.
    propagation_pad_px: how much a box taken from a neighbouring slice's mask is enlarged. 0:
      cross-sections shrink away from the slice the propagation starts from (on LIDC-IDRI-0001
      nodule 1, 3D DSC 0.81 with 0 px against 0.77 with 2 px).
    min_overlap: a slice reached by propagation is kept only if this fraction of its mask
      overlaps the neighbour's mask; it stops the propagation past the nodule's end.
    min_mean_hu: ... and only if its mean HU is above this (not air).
    detector_weight: for a candidate that still carries the detector's probability (its box as
      detected), each slice's mask is the vote ``detector_weight x P_detector + (1 -
      detector_weight) x sigmoid(SAM logit - sam_threshold) > 0.5``; 0 gives SAM alone. Chosen on
      the LIDC VOIs' ``val`` split (benchmarks/hybrid_sweep.py): there the vote beats both models
      alone in DSC; on whole CTs it keeps SAM from spreading onto slices the detector rejected.
    sam_threshold: the SAM logit the vote centres SAM's probability on (0: SAM's own threshold).
    crop_grid_px: crops are snapped to this grid (``Crop2D.around_snapped``): one crop per
      candidate box, the same for boxes a few pixels apart.
    box_pad_px: for a box drawn by a user (or proposed from a click): the margin added to each
      per-slice box found inside it before SAM is prompted with it.
    seed_hu: ... and the HU above which its dense core (``prompts.solid_seed``) is taken.
    start_iterations: how often the central slice's mask is re-prompted with its own box.
    interpolate_below_mm: on CTs with thinner slices than this, a detected candidate's SAM
      logits on every other prompted slice are the mean of its two neighbours' (no encoder run);
      0 turns it off.
    """

    window_hu: tuple[float, float] = (-1350.0, 150.0)
    crop_margin_px: int = 10
    min_crop_px: int = 44
    propagation_pad_px: float = 0.0
    min_overlap: float = 0.3
    min_mean_hu: float = -800.0
    detector_weight: float = 0.7
    sam_threshold: float = 0.0
    crop_grid_px: int = 4
    box_pad_px: float = 2.0
    seed_hu: float = -500.0
    start_iterations: int = 2
    interpolate_below_mm: float = 1.1


@dataclass
class Settings:
    """One run's settings: which models, on what device, and the two stages' knobs.

    detector/fpr/refiner: registry names or folders (``models.py``); fpr ``none`` turns the
    classifier off. folds: the detector folds to ensemble, e.g. ``0,1,2`` or ``all``.
    detector_checkpoint: file name inside each fold folder (None: the model's own).
    checkpoint: the refiner's checkpoint file (SAM/MedSAM; None: bundled or downloaded).
    encoder: the refiner's image-encoder backend, one of ``ENCODERS``.
    """

    detector: str = "nodule-detector"
    folds: str = "0"
    detector_checkpoint: str | None = None
    mirroring: bool = False
    fpr: str = "nodule-fpr"
    refiner: str = "litemedsam-nodule"
    checkpoint: str | None = None
    device: str = "auto"
    encoder: str = "auto"
    bf16: bool = False
    candidates: CandidateSettings = field(default_factory=CandidateSettings)
    refine: RefineSettings = field(default_factory=RefineSettings)

    def to_dict(self) -> dict:
        """JSON-ready, nested as the dataclasses are (the report's ``settings``)."""
        out = asdict(self)
        out["refine"]["window_hu"] = list(self.refine.window_hu)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Settings:
        """The inverse of ``to_dict``; keys it does not know are refused (a typo is not a default)."""
        data = dict(data)
        candidates = CandidateSettings(**_known(CandidateSettings, data.pop("candidates", {})))
        refine = dict(_known(RefineSettings, data.pop("refine", {})))
        if "window_hu" in refine:
            refine["window_hu"] = tuple(refine["window_hu"])
        return cls(**_known(cls, data), candidates=candidates, refine=RefineSettings(**refine))

    def key(self) -> str:
        """A stable text of every setting, for "same settings as last time" checks."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_candidates(self, **changes) -> Settings:
        return replace(self, candidates=replace(self.candidates, **changes))

    def with_refine(self, **changes) -> Settings:
        return replace(self, refine=replace(self.refine, **changes))


def _known(kind, data: dict) -> dict:
    names = {f.name for f in fields(kind)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise NoduleSAMError(f"unknown {kind.__name__} setting(s): {', '.join(unknown)}")
    return data


DEFAULTS = Settings()
