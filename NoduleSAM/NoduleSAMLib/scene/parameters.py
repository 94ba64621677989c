"""The module's parameters: one table (:data:`PARAMETERS`) that the Slicer GUI's
``@parameterNodeWrapper`` pack is built from, and typed access (:class:`Parameters`) to the
``vtkMRMLScriptedModuleNode`` that holds them in the scene (saved and restored with it)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .. import models
from ..settings import DEFAULTS, DEVICES, ENCODERS, SENSITIVITIES, Settings

MODULE_NAME = "NoduleSAM"
ROI_ROLE = "NoduleSAM.roi"                 # parameter node -> ROI nodes (ordered)


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


def _default(path: str):
    """A setting's default (``settings.DEFAULTS``), by its dotted path, e.g. ``refine.crop_margin_px``."""
    value = DEFAULTS
    for part in path.split("."):
        value = getattr(value, part)
    return "" if value is None else value


# Which setting (``settings.Settings``, dotted path) each non-node parameter holds: the
# parameters' defaults are the settings' defaults, and Detect and Refine read every one.
SETTING_OF_PARAMETER = {
    "detector": "detector", "fpr": "fpr", "sensitivity": "candidates.sensitivity",
    "refiner": "refiner", "checkpoint": "checkpoint", "device": "device", "encoder": "encoder",
    "mirroring": "mirroring", "minVolume": "candidates.min_volume_mm3",
    "minInLungs": "candidates.min_in_lungs", "minDepthRatio": "candidates.min_depth_ratio",
    "blobs": "candidates.blobs", "expansion": "candidates.expansion", "padPx": "candidates.pad_px",
    "cropMargin": "refine.crop_margin_px", "detectorWeight": "refine.detector_weight",
}

PARAMETERS = (
    Parameter("inputVolume", "vtkMRMLScalarVolumeNode", label="CT volume"),
    Parameter("outputSegmentation", "vtkMRMLSegmentationNode", label="Segmentation"),
    Parameter("candidateTable", "vtkMRMLTableNode", label="Candidates table"),
    Parameter("measurementTable", "vtkMRMLTableNode", label="Measurements table"),
    Parameter("detector", str, _default("detector"),
              label="Detector (registry name or nnU-Net v2 results folder)"),
    Parameter("fpr", str, _default("fpr"),
              label="Candidate classifier (registry name, folder, or none)"),
    Parameter("sensitivity", str, _default("candidates.sensitivity"), choices=SENSITIVITIES,
              label="Sensitivity (operating point)"),
    Parameter("refiner", str, _default("refiner"), choices=tuple(models.REFINERS),
              label="Refiner"),
    Parameter("checkpoint", str, _default("checkpoint"), label="Refiner checkpoint (SAM / MedSAM)"),
    Parameter("device", str, _default("device"), choices=DEVICES, label="Device"),
    Parameter("encoder", str, _default("encoder"), choices=ENCODERS,
              label="Refiner image encoder backend"),
    Parameter("expansion", float, _default("candidates.expansion"), minimum=0.0, maximum=1.0,
              label="Box expansion (fraction of the box size)"),
    Parameter("padPx", float, _default("candidates.pad_px"), minimum=0.0, maximum=50.0,
              label="Box padding (px)"),
    Parameter("cropMargin", int, _default("refine.crop_margin_px"), minimum=0, maximum=200,
              label="Crop margin (px)"),
    Parameter("detectorWeight", float, _default("refine.detector_weight"), minimum=0.0,
              maximum=1.0, label="Detector weight in the vote with SAM"),
    Parameter("minVolume", float, _default("candidates.min_volume_mm3"), minimum=0.0,
              maximum=100000.0, label="Minimum nodule volume (mm3)"),
    Parameter("minInLungs", float, _default("candidates.min_in_lungs"), minimum=0.0, maximum=1.0,
              label="Minimum fraction inside the lungs"),
    Parameter("minDepthRatio", float, _default("candidates.min_depth_ratio"), minimum=0.0,
              maximum=5.0, label="Minimum depth/width ratio (flat filter)"),
    Parameter("blobs", bool, _default("candidates.blobs"), label="Blob-filter candidates"),
    Parameter("mirroring", bool, _default("mirroring"), label="Detector test-time mirroring"),
)
PARAMETERS_BY_NAME = {p.name: p for p in PARAMETERS}


def is_node(parameter: Parameter) -> bool:
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
        if is_node(parameter):
            return self.node.GetNodeReference(name)
        text = self.node.GetParameter(name)
        if parameter.kind is bool:
            return text == "True"
        return parameter.kind(text)

    def __setattr__(self, name, value):
        parameter = PARAMETERS_BY_NAME.get(name)
        if parameter is None:
            raise AttributeError(f"NoduleSAM has no parameter '{name}'")
        if is_node(parameter):
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


def settings_from_parameters(params: Parameters) -> Settings:
    """The ``Settings`` the parameters hold (the rest at their defaults)."""
    changes = {"": {}, "candidates": {}, "refine": {}}
    for name, path in SETTING_OF_PARAMETER.items():
        group, _, field = path.rpartition(".")
        value = getattr(params, name)
        changes[group][field] = None if name == "checkpoint" and value == "" else value
    return replace(DEFAULTS, **changes[""], candidates=replace(DEFAULTS.candidates, **changes["candidates"]),
                   refine=replace(DEFAULTS.refine, **changes["refine"]))
