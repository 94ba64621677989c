"""The module's parameters: one table (:data:`PARAMETERS`) that the Slicer GUI's
``@parameterNodeWrapper`` pack is built from, and typed access (:class:`Parameters`) to the
``vtkMRMLScriptedModuleNode`` that holds them in the scene (saved and restored with it)."""
from __future__ import annotations

from dataclasses import dataclass

from .. import boxes as boxes_mod
from .. import fpr as fpr_mod
from .. import models
from ..refine import RefineSettings

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
