"""NoduleSAM's scene logic: Detect, Add box, Click nodule and Refine as the module's buttons
run them, over the other ``scene`` modules; it holds the loaded models between presses."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .. import fpr as fpr_mod
from .. import models
from ..settings import Settings
from ..boxes import Candidate
from ..errors import NoduleSAMError
from ..outputs import segment_color
from ..pipeline import Pipeline, volume_fingerprint
from ..prompts import box_from_click
from ..refine import BoxRefiner
from ..volume import CTVolume
from .jobs import Job, check_same_ct
from .parameters import Parameters, settings_from_parameters
from .rois import (ROI_CLICK_ATTRIBUTE, ROI_SEGMENT_ATTRIBUTE, add_roi, add_roi_for_candidate,
                   boxes_overlap, candidate_from_roi)
from .segments import (SEGMENT_INPUT_TAG, check_segmentation_frame, ensure_segmentation,
                       segment_edited, segment_of_roi, segment_tag, write_segment)
from .tables import update_candidate_table, update_measurement_table
from .volumes import box_from_roi, ct_from_volume_node, set_roi_to_box, voxel_from_world

# Segment states before a Refine (see Logic.segment_state).
NEW, UNCHANGED, CHANGED, EDITED = "new", "unchanged", "changed", "edited by hand"
# What Refine does to a segment the user edited by hand.
KEEP, REPLACE, ADD = "keep", "replace", "add"


@dataclass
class RefinePlan:
    """What a Refine will do (:meth:`Logic.plan_refine`): the CT read once, one item per ROI
    (``roi``, ``candidate``, ``messages``, ``key``, ``state``), the settings."""

    volume_node: object
    volume: CTVolume
    items: list[dict]
    config: Settings


@dataclass
class RefineSummary:
    refined: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept_edited: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    encoder_calls: int = 0
    timings_s: dict = field(default_factory=dict)


class Logic:
    """NoduleSAM's scene logic. Holds the loaded models, so crop embeddings are reused between
    Refine presses (editing one ROI re-runs the mask decoder, and the encoder only for crops the
    edit moved out of)."""

    def __init__(self, detector=None):
        """detector: an object with ``predict(CTVolume) -> detect.Detection`` to use instead of
        loading the one the parameters name (scripts holding a model, tests)."""
        self._refiner: BoxRefiner | None = None
        self._refiner_key = None
        self._given_detector = detector
        self._detector = None
        self._detector_key = None
        self._fpr = None
        self._fpr_key = None

    # models (loaded on the worker thread)
    @staticmethod
    def _device(name: str) -> str:
        if name != "auto":
            return name
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def refiner(self, config: Settings) -> BoxRefiner:
        key = (config.refiner, config.checkpoint, config.device, config.encoder, config.bf16)
        if self._refiner is None or self._refiner_key != key:
            device = self._device(config.device)
            sam = models.build_sam(config.refiner, config.checkpoint, device)
            self._refiner = BoxRefiner(sam, config.refine, bf16=config.bf16, encoder=config.encoder)
            self._refiner_key = key
        self._refiner.settings = config.refine  # the model's cached embeddings stay valid
        return self._refiner

    def detector(self, config: Settings):
        from ..detect import Detector

        if self._given_detector is not None:
            return self._given_detector
        key = (config.detector, config.folds, config.detector_checkpoint, config.device,
               config.mirroring)
        if self._detector is None or self._detector_key != key:
            from ..cli import parse_folds

            folder = models.detector_folder(config.detector)
            self._detector = Detector(folder, parse_folds(config.folds), config.detector_checkpoint,
                                      self._device(config.device), config.mirroring)
            self._detector_key = key
        return self._detector

    def fpr(self, config: Settings):
        """The candidate classifier the parameters name (None for ``none``)."""
        if config.fpr in ("", "none"):
            return None
        key = (config.fpr, config.device)
        if self._fpr is None or self._fpr_key != key:
            self._fpr = fpr_mod.FalsePositiveReducer(models.fpr_folder(config.fpr),
                                                     self._device(config.device))
            self._fpr_key = key
        return self._fpr

    @staticmethod
    def _config(params: Parameters) -> Settings:
        """Every setting the parameters hold (``settings_from_parameters``)."""
        return settings_from_parameters(params)

    # Detect
    def detect_job(self, params: Parameters) -> Job:
        """Run the detector; ``finish`` adds an ROI per candidate that overlaps no existing ROI."""
        volume = ct_from_volume_node(params.inputVolume)
        config = self._config(params)

        def work(progress):
            progress(0, 1, "loading the detector")
            fpr = self.fpr(config)
            detector = self.detector(config)
            pipeline = Pipeline(detector, None, config.candidates, fpr,
                                fpr.threshold(config.candidates.sensitivity) if fpr else 0.0)
            # progress after every batch of slices: Cancel stops the detector there
            detection = detector.predict(volume, progress=lambda done, total: progress(
                done, total + 1, f"detecting nodules: slice {done} of {total}"))
            progress(len(volume.hu), len(volume.hu) + 1, "scoring the candidates")
            candidates = pipeline.candidate_stages(volume, detection)["kept"]
            progress(1, 1, f"{len(candidates)} candidates")
            return candidates

        volume_node = params.inputVolume

        def finish(candidates):
            check_same_ct(params, volume_node, "Detect")
            return self.add_candidates(params, candidates)

        return Job("Detect", work, finish, params)

    def add_candidates(self, params: Parameters, candidates: list[Candidate]) -> list:
        """ROIs for ``candidates``, numbered after the existing ones; a candidate overlapping an
        existing ROI is left out, so a second Detect never duplicates or moves the user's boxes."""
        volume_node = params.inputVolume
        existing = [box_from_roi(r, volume_node) for r in params.rois if r.GetNumberOfControlPoints()]
        added = []
        for candidate in candidates:
            if any(boxes_overlap(candidate.box_ijk, box) for box in existing):
                continue
            added.append(add_roi_for_candidate(params, candidate))
            existing.append(candidate.box_ijk)
        update_candidate_table(params)
        return added

    def add_click(self, params: Parameters, point_ras, name: str | None = None):
        """An ROI around the nodule at a click (a fiducial's world RAS position): the box the
        click proposes (``prompts.box_from_click``), which Refine then segments like any ROI.
        The click is kept on the ROI (``ROI_CLICK_ATTRIBUTE``)."""
        volume = ct_from_volume_node(params.inputVolume)
        zyx = voxel_from_world(point_ras, params.inputVolume)
        if not all(0 <= v < n for v, n in zip(zyx, volume.hu.shape)):
            raise NoduleSAMError("the click is outside the CT: click on the nodule in the CT")
        box = box_from_click(volume.hu, volume.spacing_zyx_mm, zyx)
        roi = add_roi(params, name)
        set_roi_to_box(roi, params.inputVolume, box)
        roi.SetAttribute(ROI_CLICK_ATTRIBUTE, json.dumps(list(zyx)))
        update_candidate_table(params)
        return roi

    # Refine
    def segment_state(self, params: Parameters, roi, input_key: str) -> str:
        segment_id = segment_of_roi(params, roi)
        if segment_id is None:
            return NEW
        if segment_edited(params, segment_id):
            return EDITED
        segment = params.outputSegmentation.GetSegmentation().GetSegment(segment_id)
        return UNCHANGED if segment_tag(segment, SEGMENT_INPUT_TAG) == input_key else CHANGED

    def refine_states(self, params: Parameters, plan: RefinePlan | None = None) -> dict:
        """ROI name -> its segment's state (new, unchanged, changed, edited by hand)."""
        return {item["roi"].GetName(): item["state"] for item in (plan or self.plan_refine(params)).items}

    def plan_refine(self, params: Parameters) -> RefinePlan:
        """Everything Refine will do, checked before anything is touched. The CT is read and
        hashed here once; pass the plan to :meth:`refine_job` (after asking the user about
        :meth:`refine_states`) rather than planning again."""
        volume = ct_from_volume_node(params.inputVolume)
        rois = params.rois
        if not rois:
            raise NoduleSAMError("there are no nodule boxes: press Detect, or Add box")
        check_segmentation_frame(params)
        fingerprint = volume_fingerprint(volume)
        config = self._config(params)
        # a segment is unchanged only if its box, CT, refiner and every refine setting are
        model_key = {"refiner": config.refiner, "checkpoint": config.checkpoint,
                     "refine": config.to_dict()["refine"]}
        items, problems = [], []
        for roi in rois:
            try:
                candidate, messages = candidate_from_roi(roi, params.inputVolume, volume.hu.shape)
            except NoduleSAMError as err:
                problems.append(str(err))
                continue
            key = json.dumps({"ct": fingerprint, "box": list(candidate.box_ijk), **model_key,
                              "prompts": {str(z): b.tolist() for z, b in
                                          sorted(candidate.prompt_boxes().items())}})
            items.append({"roi": roi, "candidate": candidate, "messages": messages, "key": key,
                          "state": self.segment_state(params, roi, key) if params.outputSegmentation
                          else NEW})
        if problems:
            raise NoduleSAMError("; ".join(problems))
        return RefinePlan(params.inputVolume, volume, items, config)

    def refine_job(self, params: Parameters, edited: str = KEEP,
                   plan: RefinePlan | None = None) -> Job:
        """Refine every ROI that is new or changed since its segment was written.

        edited: what to do with a segment the user edited by hand whose ROI changed: ``keep`` it
          (the default; reported), ``replace`` it, or ``add`` a new segment beside it.
        plan: from :meth:`plan_refine` just before (None: planned here).
        """
        plan = plan or self.plan_refine(params)
        if plan.volume_node is not params.inputVolume:
            raise NoduleSAMError("the CT changed since Refine was planned; press Refine again")
        volume, config = plan.volume, plan.config
        summary = RefineSummary()
        todo = []
        for item in plan.items:
            summary.messages += item["messages"]
            name = item["roi"].GetName()
            if item["state"] == UNCHANGED:
                summary.unchanged.append(name)
            elif item["state"] == EDITED and edited == KEEP:
                summary.kept_edited.append(name)
                summary.messages.append(f"'{name}': its segment was edited by hand; kept as it is")
            else:
                todo.append(item)

        def work(progress):
            progress(0, len(todo), "loading the refiner")
            refiner = self.refiner(config) if todo else None
            calls = refiner.encoder_calls if refiner else 0

            def step(done, total):
                progress(done, total, f"refined {done} of {total}")

            nodules = Pipeline(None, refiner).segment(
                volume, [item["candidate"] for item in todo], summary.timings_s, progress=step)
            summary.encoder_calls = (refiner.encoder_calls - calls) if refiner else 0
            return nodules

        volume_node = plan.volume_node

        def finish(nodules):
            check_same_ct(params, volume_node, "Refine")
            segmentation = ensure_segmentation(params)
            statuses = {}
            for item, nodule in zip(todo, nodules):
                roi = item["roi"]
                if roi not in params.rois:
                    continue  # deleted while refining
                number = params.rois.index(roi) + 1
                segment_id = segment_of_roi(params, roi)
                name = roi.GetName()
                if item["state"] == EDITED and edited == ADD:
                    segment_id, name = None, f"{name} (refined)"
                segment_id = write_segment(segmentation, params.inputVolume, segment_id, name,
                                           segment_color(number), item["candidate"].box_ijk,
                                           nodule.mask, item["key"])
                roi.SetAttribute(ROI_SEGMENT_ATTRIBUTE, segment_id)
                summary.refined.append(roi.GetName())
                statuses[roi.GetName()] = "refined"
            statuses |= {name: "unchanged" for name in summary.unchanged}
            statuses |= {name: EDITED for name in summary.kept_edited}
            update_measurement_table(params, volume, statuses)
            update_candidate_table(params)
            return summary

        return Job("Refine", work, finish, params)

    # Synchronous forms for scripts and tests
    def detect(self, params: Parameters) -> list:
        return self.detect_job(params).run()

    def refine(self, params: Parameters, edited: str = KEEP) -> RefineSummary:
        return self.refine_job(params, edited).run()


def parameters_for(volume_node, **settings) -> Parameters:
    """The NoduleSAM parameter node of ``volume_node``'s scene, with ``volume_node`` as the CT
    and ``settings`` (names of :data:`PARAMETERS`, e.g. ``sensitivity="high"``) set."""
    if volume_node is None or volume_node.GetScene() is None:
        raise NoduleSAMError("give a CT volume node that is in a scene")
    params = Parameters.get_or_create(volume_node.GetScene())
    params.inputVolume = volume_node
    for name, value in settings.items():
        setattr(params, name, value)
    return params


def auto_segment(volume_node, logic: Logic | None = None, **settings):
    """Detect and refine on ``volume_node`` as the Auto-segment button does; returns the
    segmentation node (one segment per nodule). logic: a :class:`Logic` whose loaded models are
    reused; settings: as :func:`parameters_for`."""
    logic = logic or Logic()
    params = parameters_for(volume_node, **settings)
    logic.detect(params)
    if not params.rois:
        raise NoduleSAMError(f"no nodule candidates found on '{volume_node.GetName()}' at "
                             f"sensitivity '{params.sensitivity}': try sensitivity='high', or "
                             "add boxes")
    logic.refine(params)
    return params.outputSegmentation
