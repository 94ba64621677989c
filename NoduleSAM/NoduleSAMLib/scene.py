"""MRML glue between the engine and a Slicer scene. Imports ``slicer`` and VTK, never Qt.

It runs inside Slicer and under the ``slicer-core`` wheel (real MRML, no GUI), so everything the
Slicer module does to the scene is tested headless.

- A CT volume node <-> :class:`CTVolume` (same voxels, same IJK->RAS).
- Candidates -> ``vtkMRMLMarkupsROINode`` named ``Nodule 1..n``, aligned with the CT's voxel axes;
  an ROI (moved, resized, rotated, under a parent transform) -> a voxel box, through the CT's
  RAS->IJK over the ROI's 8 corners in world coordinates.
- One segment per ROI in a ``vtkMRMLSegmentationNode`` whose reference geometry is the CT. Each
  segment we write carries tags: a hash of its voxels (so a hand edit is noticed and never
  silently overwritten) and a key of the inputs that produced it (so an unchanged ROI is not
  refined again).
- The module's state lives in a parameter node (:class:`Parameters`), stored exactly as Slicer's
  ``@parameterNodeWrapper`` stores it, so the GUI binds to it and a saved scene restores it.
- Long work is a :class:`Job`: ``prepare`` and ``finish`` run on the main thread and touch MRML;
  ``work`` runs anywhere (a worker thread in Slicer) and touches only numpy and torch.
"""
from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from . import boxes as boxes_mod
from . import fpr as fpr_mod
from . import models
from .boxes import Candidate
from .errors import NoduleSAMError
from .geometry import (
    apply_matrix,
    box3d_corners_ijk,
    box3d_from_corners_ijk,
    clip_box3d,
)
from .measure import measure_nodule
from .outputs import segment_color
from .pipeline import Pipeline, volume_fingerprint
from .prompts import box_from_click
from .refine import BoxRefiner, RefineSettings
from .volume import CTVolume, check_ct

MODULE_NAME = "NoduleSAM"
ROI_CLICK_ATTRIBUTE = "NoduleSAM.click"     # the voxel [z, y, x] a click ROI came from
ROI_ROLE = "NoduleSAM.roi"                 # parameter node -> ROI nodes (ordered)
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
SEGMENT_HASH_TAG = "NoduleSAM.VoxelHash"   # hash of the voxels we wrote
SEGMENT_INPUT_TAG = "NoduleSAM.InputKey"   # what produced them (box, CT, refiner, settings)
ROI_NAME_PREFIX = "Nodule "
TABLE_ROW_NODES_ATTRIBUTE = "NoduleSAM.RowNodeIDs"  # table node -> JSON list, row r -> ROI ID

# Segment states before a Refine (see Logic.segment_state).
NEW, UNCHANGED, CHANGED, EDITED = "new", "unchanged", "changed", "edited by hand"
# What Refine does to a segment the user edited by hand.
KEEP, REPLACE, ADD = "keep", "replace", "add"


# ---------------------------------------------------------------------------------------------
# Parameters
@dataclass(frozen=True)
class Parameter:
    """One entry of the parameter pack.

    kind: ``str``/``int``/``float``/``bool``, or the class name of an MRML node.
    choices/minimum/maximum: what the GUI offers (also the ``@parameterNodeWrapper`` annotations).
    """

    name: str
    kind: object
    default: object = None
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    label: str = ""


PARAMETERS = (
    Parameter("inputVolume", "vtkMRMLScalarVolumeNode", label="CT volume"),
    Parameter("outputSegmentation", "vtkMRMLSegmentationNode", label="Segmentation"),
    Parameter("candidateTable", "vtkMRMLTableNode", label="Candidates table"),
    Parameter("measurementTable", "vtkMRMLTableNode", label="Measurements table"),
    Parameter("detector", str, models.DEFAULT_DETECTOR,
              label="Detector (registry name or nnU-Net v2 results folder)"),
    Parameter("fpr", str, models.DEFAULT_FPR,
              label="Candidate classifier (registry name, folder, or none)"),
    Parameter("sensitivity", str, fpr_mod.DEFAULT_SENSITIVITY, choices=fpr_mod.SENSITIVITIES,
              label="Sensitivity (operating point)"),
    Parameter("refiner", str, models.DEFAULT_REFINER, choices=tuple(models.REFINERS),
              label="Refiner"),
    Parameter("checkpoint", str, "", label="Refiner checkpoint (SAM / MedSAM)"),
    Parameter("device", str, "auto", choices=("auto", "cpu", "cuda"), label="Device"),
    Parameter("expansion", float, boxes_mod.EXPANSION, minimum=0.0, maximum=1.0,
              label="Box expansion (fraction of the box size)"),
    Parameter("cropMargin", int, RefineSettings.crop_margin_px, minimum=0, maximum=200,
              label="Crop margin (px)"),
    Parameter("minVolume", float, boxes_mod.MIN_VOLUME_MM3, minimum=0.0, maximum=100000.0,
              label="Minimum nodule volume (mm3)"),
    Parameter("mirroring", bool, False, label="Detector test-time mirroring"),
)
PARAMETERS_BY_NAME = {p.name: p for p in PARAMETERS}


def _is_node(parameter: Parameter) -> bool:
    return isinstance(parameter.kind, str)


class Parameters:
    """Typed access to the module's ``vtkMRMLScriptedModuleNode``.

    Values are stored as ``@parameterNodeWrapper`` stores them (numbers with ``str()``, booleans
    as ``True``/``False``, nodes as a node reference with an empty parameter of the same name), so
    the Slicer GUI's wrapper and this class read and write the same node. The ROIs are an ordered
    node-reference list (role :data:`ROI_ROLE`); MRML drops a reference when its node is deleted.
    """

    def __init__(self, node):
        object.__setattr__(self, "node", node)
        for parameter in PARAMETERS:
            if not node.HasParameter(parameter.name):
                setattr(self, parameter.name, parameter.default)

    @classmethod
    def get_or_create(cls, scene) -> Parameters:
        """The scene's NoduleSAM parameter node (created with defaults on first use)."""
        node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", MODULE_NAME)
            node.SetSingletonTag(MODULE_NAME)
            node.SetAttribute("ModuleName", MODULE_NAME)
        return cls(node)

    def __getattr__(self, name):
        parameter = PARAMETERS_BY_NAME.get(name)
        if parameter is None:
            raise AttributeError(name)
        if _is_node(parameter):
            return self.node.GetNodeReference(name)
        text = self.node.GetParameter(name)
        if parameter.kind is bool:
            return text == "True"
        return parameter.kind(text)

    def __setattr__(self, name, value):
        parameter = PARAMETERS_BY_NAME.get(name)
        if parameter is None:
            raise AttributeError(f"NoduleSAM has no parameter '{name}'")
        if _is_node(parameter):
            self.node.SetParameter(name, "")
            self.node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        elif parameter.kind is bool:
            self.node.SetParameter(name, "True" if value else "False")
        else:
            self.node.SetParameter(name, str(parameter.kind(value)))

    @property
    def scene(self):
        return self.node.GetScene()

    @property
    def rois(self) -> list:
        node = self.node
        return [node.GetNthNodeReference(ROI_ROLE, n)
                for n in range(node.GetNumberOfNodeReferences(ROI_ROLE))
                if node.GetNthNodeReference(ROI_ROLE, n) is not None]

    def add_roi(self, roi) -> None:
        self.node.AddNodeReferenceID(ROI_ROLE, roi.GetID())


# ---------------------------------------------------------------------------------------------
# Volumes
def _matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _array_to_matrix(array) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def ct_from_volume_node(volume_node) -> CTVolume:
    """The CT in a scalar volume node as the engine's :class:`CTVolume` (checked to be a CT).

    The geometry is the node's own IJK->RAS; a parent transform of the node is honoured where
    boxes are converted (:func:`box_from_roi`, :func:`add_roi_for_box`).
    """
    if volume_node is None:
        raise NoduleSAMError("select a CT volume first")
    if (not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode")
            or volume_node.GetImageData() is None):
        raise NoduleSAMError(f"'{volume_node.GetName()}' is not a CT image volume")
    image = volume_node.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        raise NoduleSAMError(f"'{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} "
                             "components per voxel; a CT has one (grey values in HU)")
    dims = image.GetDimensions()
    hu = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    hu = hu.reshape(dims[::-1]).astype(np.float32)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    volume = CTVolume(hu, _matrix_to_array(matrix), source=volume_node.GetName())
    check_ct(volume)
    return volume


def add_volume_node(scene, volume: CTVolume, name: str = "CT"):
    """A scalar volume node holding ``volume`` (int16 when the HU are whole numbers)."""
    hu = volume.hu
    if np.all(hu == np.round(hu)) and hu.min() >= -32768 and hu.max() <= 32767:
        hu = hu.astype(np.int16)
    image = vtk.vtkImageData()
    image.SetDimensions(*hu.shape[::-1])
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(hu).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(_array_to_matrix(volume.ijk_to_ras))
    node.SetAndObserveImageData(image)
    node.CreateDefaultDisplayNodes()
    return node


# ---------------------------------------------------------------------------------------------
# ROIs <-> voxel boxes
def _transform_between(source_node, target_node) -> vtk.vtkGeneralTransform:
    """Transform from ``source_node``'s frame to ``target_node``'s (None: world), linear or not."""
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(source_node, target_node, transform)
    return transform


def _volume_ras_to_ijk(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(matrix)
    return _matrix_to_array(matrix)


def roi_corners_world(roi) -> np.ndarray:
    """The 8 corners of an ROI in world RAS (its rotation and parent transforms applied)."""
    bounds = [0.0] * 6
    roi.GetObjectBounds(bounds)
    corners_object = np.array([[x, y, z] for z in bounds[4:6] for y in bounds[2:4] for x in bounds[0:2]])
    corners_node = apply_matrix(_matrix_to_array(roi.GetObjectToNodeMatrix()), corners_object)
    to_world = _transform_between(roi.GetParentTransformNode(), None)
    return np.array([to_world.TransformPoint(*p) for p in corners_node])


def box_from_roi(roi, volume_node) -> tuple[int, int, int, int, int, int]:
    """The half-open voxel box ``(z0, z1, y0, y1, x0, x1)`` of ``volume_node`` whose voxel centres
    lie inside the axis-aligned (in voxel space) hull of the ROI's 8 corners; not clipped."""
    if roi.GetNumberOfControlPoints() == 0:
        raise NoduleSAMError(f"'{roi.GetName()}' is not placed yet: click in a view to place it")
    to_volume = _transform_between(None, volume_node.GetParentTransformNode())
    corners_ras = np.array([to_volume.TransformPoint(*p) for p in roi_corners_world(roi)])
    return box3d_from_corners_ijk(apply_matrix(_volume_ras_to_ijk(volume_node), corners_ras))


def set_roi_to_box(roi, volume_node, box_ijk) -> None:
    """Make ``roi`` the outer boundary of a voxel box, aligned with the volume's voxel axes."""
    ijk_to_ras = np.linalg.inv(_volume_ras_to_ijk(volume_node))
    corners_ras = apply_matrix(ijk_to_ras, box3d_corners_ijk(box_ijk))
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = ijk_to_ras[:3, :3] / spacing
    object_to_node[:3, 3] = corners_ras.mean(axis=0)
    z0, z1, y0, y1, x0, x1 = box_ijk
    roi.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    roi.SetAndObserveObjectToNodeMatrix(_array_to_matrix(object_to_node))
    roi.SetSize(*(np.array([x1 - x0, y1 - y0, z1 - z0]) * spacing))


def voxel_from_world(point_ras, volume_node) -> tuple[int, int, int]:
    """The voxel ``(z, y, x)`` of ``volume_node`` nearest a world RAS point (a fiducial's
    position, with its parent transforms applied by Slicer), through the volume's transforms."""
    to_volume = _transform_between(None, volume_node.GetParentTransformNode())
    ijk = apply_matrix(_volume_ras_to_ijk(volume_node), np.array(to_volume.TransformPoint(*point_ras)))
    return tuple(int(v) for v in np.round(ijk[::-1]))


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


def _boxes_overlap(a, b) -> bool:
    return all(max(a[i], b[i]) < min(a[i + 1], b[i + 1]) for i in (0, 2, 4))


# ---------------------------------------------------------------------------------------------
# Segments
def ensure_segmentation(params: Parameters):
    """The output segmentation node, created on first use in the CT's frame (reference geometry
    and parent transform). A segmentation the user chose is aligned only while it holds no
    segments, so their other segments never move; :func:`check_segmentation_frame` refuses one
    that cannot hold the CT's voxels."""
    node = params.outputSegmentation
    if node is None:
        node = params.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                              f"{params.inputVolume.GetName()} nodules")
        node.CreateDefaultDisplayNodes()
        params.outputSegmentation = node
    if node.GetSegmentation().GetNumberOfSegments() == 0:
        node.SetAndObserveTransformNodeID(params.inputVolume.GetTransformNodeID())
    if node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(params.inputVolume)
    return node


def check_segmentation_frame(params: Parameters) -> None:
    """Segments are written in the CT's voxel frame: the chosen segmentation, if it already
    holds segments, must sit under the CT's transform (or both under none)."""
    node, volume_node = params.outputSegmentation, params.inputVolume
    if (node is not None and node.GetSegmentation().GetNumberOfSegments()
            and node.GetTransformNodeID() != volume_node.GetTransformNodeID()):
        raise NoduleSAMError(
            f"'{node.GetName()}' is under a different transform than the CT "
            f"'{volume_node.GetName()}': choose a segmentation in the CT's frame, or none to "
            "create one")


def _segment_tag(segment, tag: str) -> str | None:
    value = vtk.mutable("")
    return str(value) if segment.GetTag(tag, value) else None


def segment_voxels(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """The segment's voxels as flat indices into the CT's ``[z, y, x]`` array, sorted."""
    image = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if image is None or segment is None:
        return np.zeros(0, dtype=np.int64)
    reference = slicer.vtkOrientedImageData()
    dims = volume_node.GetImageData().GetDimensions()
    reference.SetExtent(0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    reference.SetImageToWorldMatrix(matrix)
    to_world = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(to_world)
    if not np.allclose(_matrix_to_array(to_world), _matrix_to_array(matrix), atol=1e-4):
        # The user changed the segmentation's geometry: look at it on the CT's grid.
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            image, reference, resampled, False, True)
        image = resampled
    extent = image.GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        return np.zeros(0, dtype=np.int64)
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    labels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)
    z, y, x = np.nonzero(labels == segment.GetLabelValue())
    z, y, x = z + extent[4], y + extent[2], x + extent[0]
    inside = (z >= 0) & (z < dims[2]) & (y >= 0) & (y < dims[1]) & (x >= 0) & (x < dims[0])
    return np.sort(np.ravel_multi_index((z[inside], y[inside], x[inside]), dims[::-1]))


def voxel_hash(flat_indices: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(flat_indices, dtype=np.int64).tobytes(),
                           digest_size=12).hexdigest()


def write_segment(segmentation_node, volume_node, segment_id: str | None, name: str, color,
                  box_ijk, mask: np.ndarray, input_key: str) -> str:
    """Write ``mask`` (bool, shaped like ``box_ijk``) as the whole of a segment; returns its ID.

    ``segment_id`` None (or no longer present) creates a segment. The segment is tagged with the
    hash of what was written and the key of the inputs that produced it.
    """
    segmentation = segmentation_node.GetSegmentation()
    if segment_id is None or segmentation.GetSegment(segment_id) is None:
        segment_id = segmentation.AddEmptySegment(
            segmentation.GenerateUniqueSegmentID(name.replace(" ", "_")), name, list(color))
    z0, z1, y0, y1, x0, x1 = box_ijk
    image = slicer.vtkOrientedImageData()
    image.SetExtent(x0, x1 - 1, y0, y1 - 1, z0, z1 - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    dims = volume_node.GetImageData().GetDimensions()
    whole = [0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1]  # clears what lay outside the box
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, segmentation_node, segment_id,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, whole):
        raise NoduleSAMError(f"could not write segment '{name}'")
    segment = segmentation.GetSegment(segment_id)
    segment.SetName(name)
    segment.SetColor(*color)
    segment.SetTag(SEGMENT_HASH_TAG, voxel_hash(segment_voxels(segmentation_node, segment_id,
                                                               volume_node)))
    segment.SetTag(SEGMENT_INPUT_TAG, input_key)
    return segment_id


def segment_of_roi(params: Parameters, roi) -> str | None:
    """The ID of the segment refined from ``roi``, if it still exists."""
    node, segment_id = params.outputSegmentation, roi.GetAttribute(ROI_SEGMENT_ATTRIBUTE)
    if node is None or not segment_id or node.GetSegmentation().GetSegment(segment_id) is None:
        return None
    return segment_id


def segment_edited(params: Parameters, segment_id: str) -> bool:
    """Whether the segment's voxels differ from what NoduleSAM last wrote (or it never wrote it)."""
    node = params.outputSegmentation
    written = _segment_tag(node.GetSegmentation().GetSegment(segment_id), SEGMENT_HASH_TAG)
    return written != voxel_hash(segment_voxels(node, segment_id, params.inputVolume))


# ---------------------------------------------------------------------------------------------
# Tables
def _fill_table(table_node, columns: list[tuple[str, str]], rows: list[dict], row_nodes) -> None:
    """Rewrite ``table_node`` with ``columns`` (name, 'string'|'double') and ``rows``; row r is
    about ``row_nodes[r]`` (its node ID is kept on the table, see :func:`roi_of_table_row`)."""
    table = table_node.GetTable()
    table_node.RemoveAllColumns()
    # As Slicer's Segment Statistics does: without it qMRMLTableModel shows the column names as
    # row 0, and every row the user clicks is one off.
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.SetAttribute(TABLE_ROW_NODES_ATTRIBUTE, json.dumps([n.GetID() for n in row_nodes]))
    for name, kind in columns:
        array = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
        array.SetName(name)
        array.SetNumberOfValues(len(rows))
        for r, row in enumerate(rows):
            value = row.get(name)
            array.SetValue(r, ("" if value is None else str(value)) if kind == "string"
                           else (np.nan if value is None else float(value)))
        table.AddColumn(array)
    for index, (name, _) in enumerate(columns):
        table_node.SetColumnProperty(index, "title", name)
    table_node.Modified()


def roi_of_table_row(table_node, row: int):
    """The ROI that row ``row`` of a NoduleSAM table is about (None if gone or out of range)."""
    try:
        ids = json.loads(table_node.GetAttribute(TABLE_ROW_NODES_ATTRIBUTE) or "[]")
    except ValueError:
        return None
    scene = table_node.GetScene()
    return scene.GetNodeByID(ids[row]) if scene is not None and 0 <= row < len(ids) else None


def _ensure_table(params: Parameters, parameter: str, name: str):
    node = getattr(params, parameter)
    if node is None:
        node = params.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        setattr(params, parameter, node)
    return node


CANDIDATE_COLUMNS = [("Name", "string"), ("Score", "double"), ("Size (mm)", "string"),
                     ("Slices", "string"), ("Segment", "string")]
MEASUREMENT_COLUMNS = [("Name", "string"), ("Volume (mm3)", "double"),
                       ("Long axis (mm)", "double"), ("Short axis (mm)", "double"),
                       ("Mean HU", "double"), ("Slices", "string"), ("Status", "string")]


def update_candidate_table(params: Parameters) -> None:
    """One row per ROI (in list order): score, size, slice range; row n is ``params.rois[n]``."""
    rows = []
    volume_node = params.inputVolume
    for roi in params.rois:
        row = {"Name": roi.GetName(), "Score": roi_score(roi)}
        size = [0.0] * 3
        roi.GetSizeWorld(size)
        row["Size (mm)"] = " x ".join(f"{v:.1f}" for v in size)
        if volume_node is not None and roi.GetNumberOfControlPoints():
            z0, z1 = box_from_roi(roi, volume_node)[:2]
            row["Slices"] = f"{z0}-{z1 - 1}"
        row["Segment"] = "yes" if segment_of_roi(params, roi) else ""
        rows.append(row)
    _fill_table(_ensure_table(params, "candidateTable", "NoduleSAM candidates"), CANDIDATE_COLUMNS,
                rows, params.rois)


def crop_volume(volume: CTVolume, box_ijk) -> CTVolume:
    """The sub-volume ``box_ijk`` (a view, no copy), its origin moved so that every voxel keeps
    its RAS position."""
    z0, z1, y0, y1, x0, x1 = box_ijk
    shift = np.eye(4)
    shift[:3, 3] = [x0, y0, z0]
    return CTVolume(volume.hu[z0:z1, y0:y1, x0:x1], volume.ijk_to_ras @ shift, volume.source)


def measure_segment(params: Parameters, volume: CTVolume, segment_id: str) -> tuple[dict, str]:
    """``measure_nodule`` of a segment as it is now (hand edits included), and its slice range;
    measured on the segment's bounding box, not on a CT-sized mask."""
    flat = segment_voxels(params.outputSegmentation, segment_id, params.inputVolume)
    if flat.size == 0:
        return measure_nodule(volume, np.zeros((1, 1, 1), dtype=bool)), ""
    zyx = np.unravel_index(flat, volume.hu.shape)
    lows = [int(v.min()) for v in zyx]
    box = (lows[0], int(zyx[0].max()) + 1, lows[1], int(zyx[1].max()) + 1, lows[2],
           int(zyx[2].max()) + 1)
    sub = crop_volume(volume, box)
    mask = np.zeros(sub.hu.shape, dtype=bool)
    mask[tuple(v - low for v, low in zip(zyx, lows))] = True
    return measure_nodule(sub, mask), f"{box[0]}-{box[1] - 1}"


def update_measurement_table(params: Parameters, volume: CTVolume, statuses: dict | None = None):
    """Measure every ROI's segment as it is now (hand edits included) into the table node."""
    rows, measured, statuses = [], [], statuses or {}
    for roi in params.rois:
        segment_id = segment_of_roi(params, roi)
        if segment_id is None:
            continue
        measured.append(roi)
        m, slices = measure_segment(params, volume, segment_id)
        rows.append({"Name": roi.GetName(), "Volume (mm3)": m["volume_mm3"],
                     "Long axis (mm)": m["long_axis_mm"], "Short axis (mm)": m["short_axis_mm"],
                     "Mean HU": m["mean_hu"], "Slices": slices,
                     "Status": statuses.get(roi.GetName(), "")})
    _fill_table(_ensure_table(params, "measurementTable", "NoduleSAM measurements"),
                MEASUREMENT_COLUMNS, rows, measured)


# ---------------------------------------------------------------------------------------------
# Jobs
class Cancelled(Exception):
    """Raised inside a job's work when the user pressed Cancel."""


@dataclass
class Job:
    """Long work split by thread: ``work(progress)`` touches no MRML and may run on a worker
    thread; ``finish(result)`` writes to the scene on the main thread and returns a summary.

    progress: callable(done, total, text) that raises :class:`Cancelled` to stop the work.
    """

    title: str
    work: Callable
    finish: Callable
    params: Parameters | None = None  # the job's own: it finishes even if the GUI let go of its

    def run(self, progress=None):
        """Both halves on this thread (tests, scripts, the self-test)."""
        return self.finish(self.work(progress or (lambda done, total, text="": None)))


def check_same_ct(params: Parameters, volume_node, title: str) -> None:
    """A job's finish writes nothing unless its CT is still the input and still in the scene
    (the user may switch volumes, or close the scene, while the work runs)."""
    if params.inputVolume is not volume_node or volume_node.GetScene() is None:
        raise NoduleSAMError(f"the CT changed or the scene was closed during {title}; nothing "
                             f"was written: press {title} again")


@dataclass
class RefinePlan:
    """What a Refine will do (:meth:`Logic.plan_refine`): the CT read once, one item per ROI
    (``roi``, ``candidate``, ``messages``, ``key``, ``state``), the settings."""

    volume_node: object
    volume: CTVolume
    items: list[dict]
    config: dict


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

    def refiner(self, config: dict) -> BoxRefiner:
        key = (config["refiner"], config["checkpoint"], config["device"])
        if self._refiner is None or self._refiner_key != key:
            device = self._device(config["device"])
            sam = models.build_sam(config["refiner"], config["checkpoint"] or None, device)
            self._refiner, self._refiner_key = BoxRefiner(sam, RefineSettings(), encoder="auto"), key
        self._refiner.settings.crop_margin_px = config["cropMargin"]
        return self._refiner

    def detector(self, config: dict):
        from .detect import Detector

        if self._given_detector is not None:
            return self._given_detector
        key = (config["detector"], config["device"], config["mirroring"])
        if self._detector is None or self._detector_key != key:
            folder = models.detector_folder(config["detector"])
            self._detector = Detector(folder, device=self._device(config["device"]),
                                      mirroring=config["mirroring"])
            self._detector_key = key
        return self._detector

    def fpr(self, config: dict):
        """The candidate classifier the parameters name (None for ``none``)."""
        if config["fpr"] in ("", "none"):
            return None
        key = (config["fpr"], config["device"])
        if self._fpr is None or self._fpr_key != key:
            self._fpr = fpr_mod.FalsePositiveReducer(models.fpr_folder(config["fpr"]),
                                                     self._device(config["device"]))
            self._fpr_key = key
        return self._fpr

    @staticmethod
    def _config(params: Parameters) -> dict:
        return {p.name: getattr(params, p.name) for p in PARAMETERS if not _is_node(p)}

    # Detect
    def detect_job(self, params: Parameters) -> Job:
        """Run the detector; ``finish`` adds an ROI per candidate that overlaps no existing ROI."""
        volume = ct_from_volume_node(params.inputVolume)
        config = self._config(params)

        def work(progress):
            progress(0, 1, "loading the detector")
            fpr = self.fpr(config)
            detector = self.detector(config)
            pipeline = Pipeline(detector, None, min_volume_mm3=config["minVolume"],
                                expansion=config["expansion"], fpr=fpr,
                                fpr_threshold=fpr.threshold(config["sensitivity"]) if fpr else 0.0)
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
            if any(_boxes_overlap(candidate.box_ijk, box) for box in existing):
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
        box = box_from_click(volume.hu, volume.spacing_zyx_mm, zyx, RefineSettings().seed_hu)
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
        return UNCHANGED if _segment_tag(segment, SEGMENT_INPUT_TAG) == input_key else CHANGED

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
        model_key = {k: config[k] for k in ("refiner", "checkpoint", "cropMargin")}
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
