"""Nodule boxes as ``vtkMRMLMarkupsROINode``: named ``Nodule 1..n``, aligned with the CT's
voxel axes, carrying what the detector knew about them (score, per-slice prompts, probability)
for the CT they were detected on; read back as the engine's :class:`Candidate` as they are now,
so user edits always win."""
from __future__ import annotations

import base64
import json

import numpy as np

from ..boxes import Candidate
from ..errors import NoduleSAMError
from ..geometry import clip_box3d
from ..outputs import segment_color
from .parameters import Parameters
from .volumes import box_from_roi, set_roi_to_box

ROI_CLICK_ATTRIBUTE = "NoduleSAM.click"     # the voxel [z, y, x] a click ROI came from
ROI_SEGMENT_ATTRIBUTE = "NoduleSAM.SegmentID"
ROI_SCORE_ATTRIBUTE = "NoduleSAM.Score"    # ranking score (classifier); absent for boxes the user added
ROI_PROMPTS_ATTRIBUTE = "NoduleSAM.SlicePrompts"  # detector prompt boxes, JSON {z: [x0,y0,x1,y1]}
# the detector's probability over the box as detected, JSON {"box": ijk, "shape": [z, y, x],
# "uint8": base64 of round(255 p)}; refinement votes with it while the ROI keeps that box
ROI_PRIOR_ATTRIBUTE = "NoduleSAM.DetectorProbability"
# ROI -> the volume node its score, prompts and prior were computed on; they are in that
# volume's voxel frame, so on any other volume they are dropped (a node reference: MRML keeps it
# through save, reload and ID changes on import, and drops it when the volume is deleted)
ROI_SOURCE_VOLUME_ROLE = "NoduleSAM.sourceVolume"
ROI_NAME_PREFIX = "Nodule "


def next_roi_name(rois) -> str:
    numbers = [int(name[len(ROI_NAME_PREFIX):]) for name in (r.GetName() for r in rois)
               if name.startswith(ROI_NAME_PREFIX) and name[len(ROI_NAME_PREFIX):].isdigit()]
    return f"{ROI_NAME_PREFIX}{max(numbers, default=0) + 1}"


def add_roi(params: Parameters, name: str | None = None):
    """A new, empty ROI node in the parameter node's list (for the user to place)."""
    roi = params.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name or next_roi_name(params.rois))
    roi.CreateDefaultDisplayNodes()
    if params.inputVolume is not None:
        roi.SetAndObserveTransformNodeID(params.inputVolume.GetTransformNodeID())
    number = len(params.rois) + 1
    if roi.GetDisplayNode() is not None:
        roi.GetDisplayNode().SetSelectedColor(*segment_color(number))
    params.add_roi(roi)
    return roi


def add_roi_for_candidate(params: Parameters, candidate: Candidate, name: str | None = None):
    """An ROI node for a detector candidate, with its score and per-slice prompts as attributes."""
    roi = add_roi(params, name)
    set_roi_to_box(roi, params.inputVolume, candidate.box_ijk)
    roi.SetNodeReferenceID(ROI_SOURCE_VOLUME_ROLE, params.inputVolume.GetID())
    if candidate.score is not None:
        roi.SetAttribute(ROI_SCORE_ATTRIBUTE, f"{candidate.score:.4f}")
    if candidate.slice_boxes:
        roi.SetAttribute(ROI_PROMPTS_ATTRIBUTE, json.dumps(
            {str(z): [float(v) for v in box] for z, box in candidate.slice_boxes.items()}))
    if candidate.detector_probability is not None:
        quantized = np.round(np.clip(candidate.detector_probability, 0, 1) * 255).astype(np.uint8)
        roi.SetAttribute(ROI_PRIOR_ATTRIBUTE, json.dumps({
            "box": [int(v) for v in candidate.detected_box_ijk], "shape": list(quantized.shape),
            "uint8": base64.b64encode(quantized.tobytes()).decode("ascii")}))
    return roi


def _prior_from_roi(roi):
    """``(probability, box)`` stored by ``add_roi_for_candidate``, or ``(None, None)``."""
    text = roi.GetAttribute(ROI_PRIOR_ATTRIBUTE)
    if not text:
        return None, None
    try:
        stored = json.loads(text)
        raw = np.frombuffer(base64.b64decode(stored["uint8"]), dtype=np.uint8)
        probability = raw.reshape(stored["shape"]).astype(np.float32) / 255.0
        return probability, tuple(int(v) for v in stored["box"])
    except (ValueError, KeyError, TypeError):
        return None, None  # a damaged attribute: refine with SAM alone


def _prompts_from_roi(roi) -> dict[int, np.ndarray]:
    """``{z: [x0, y0, x1, y1]}`` stored by ``add_roi_for_candidate``; raises ValueError if damaged."""
    stored = json.loads(roi.GetAttribute(ROI_PROMPTS_ATTRIBUTE) or "{}")
    if not isinstance(stored, dict):
        raise ValueError("not a JSON object")
    prompts = {int(z): np.array(box, dtype=float) for z, box in stored.items()}
    if any(box.shape != (4,) or not np.isfinite(box).all() for box in prompts.values()):
        raise ValueError("a prompt is not four finite numbers")
    return prompts


def roi_score(roi) -> float | None:
    """The ROI's ranking score, None if it has none (a box the user added) or it is damaged."""
    try:
        score = float(roi.GetAttribute(ROI_SCORE_ATTRIBUTE) or "nan")
    except ValueError:
        return None
    return score if np.isfinite(score) else None


def candidate_from_roi(roi, volume_node, shape_zyx) -> tuple[Candidate, list[str]]:
    """The ROI as it is now, as a candidate, and messages for the user.

    The detector's score, per-slice prompts and probability are kept where they still fit: only
    on the volume they were computed on, and only while they can be read (a damaged attribute
    is ignored with a message; the box alone is then refined).
    """
    box = box_from_roi(roi, volume_node)
    clipped = clip_box3d(box, shape_zyx)
    name = roi.GetName()
    if clipped is None:
        raise NoduleSAMError(f"'{name}' lies outside the CT: move it onto the CT or delete it")
    messages = [] if clipped == box else [f"'{name}' reaches outside the CT; only the part "
                                          "inside it is segmented"]
    detected = roi.GetAttribute(ROI_PROMPTS_ATTRIBUTE) or roi.GetAttribute(ROI_PRIOR_ATTRIBUTE)
    if detected and roi.GetNodeReference(ROI_SOURCE_VOLUME_ROLE) is not volume_node:
        messages.append(f"'{name}' was detected on another CT volume: its detector prompts are "
                        "not used on this one (Detect again to get them)")
        return Candidate(name, clipped, None, {}), messages
    try:
        prompts = _prompts_from_roi(roi)
    except (ValueError, TypeError) as err:
        messages.append(f"'{name}': its stored detector prompts are damaged ({err}); the box "
                        "alone is refined")
        prompts = {}
    if roi.GetAttribute(ROI_SCORE_ATTRIBUTE) and roi_score(roi) is None:
        messages.append(f"'{name}': its stored score is not a number; it is ignored")
    probability, detected_box = _prior_from_roi(roi)
    return Candidate(name, clipped, roi_score(roi), prompts, detector_probability=probability,
                     detected_box_ijk=detected_box), messages


def boxes_overlap(a, b) -> bool:
    return all(max(a[i], b[i]) < min(a[i + 1], b[i + 1]) for i in (0, 2, 4))
