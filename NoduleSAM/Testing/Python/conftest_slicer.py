"""A Slicer scene without the Slicer application, for tests under the ``slicer-core`` wheel.

slicer-core has MRML and the module logics but no ``slicer.app``/``slicer.mrmlScene``: a scene
gets an application logic and the logics NoduleSAM relies on (segmentations: the labelmap
converters; markups; volumes and colours: storage and display nodes; subject hierarchy; tables).
Imported by the test files (not a ``conftest.py``: that one belongs to the whole suite).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from nodulesam_train.detector_data import default_lidc_dir as lidc_dir  # noqa: F401 (tests import it)

LOGICS = (("Volumes", "vtkSlicerVolumesLogic"), ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
          ("Markups", "vtkSlicerMarkupsLogic"), ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
          ("CropVolume", "vtkSlicerCropVolumeLogic"), ("Colors", "vtkSlicerColorLogic"),
          ("Tables", "vtkSlicerTablesLogic"))


class HeadlessScene:
    """A ``vtkMRMLScene`` with its application logic and module logics (kept alive here)."""

    def __init__(self):
        import slicer

        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.logics = {}
        for name, class_name in LOGICS:
            logic = getattr(slicer, class_name)()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            self.app_logic.SetModuleLogic(name, logic)
            self.logics[name] = logic

    def save_reload(self, scene, folder: Path | None = None) -> "vtkMRMLScene":  # noqa: F821
        """Save ``scene`` as a Slicer data bundle (.mrb) and open it in a new scene; returns it.

        The new scene (and its logics) replaces this object's, as ``File > Open`` would.
        """
        folder = Path(folder or tempfile.mkdtemp(prefix="nodulesam-mrb-"))
        bundle = folder / "bundle"
        bundle.mkdir(parents=True, exist_ok=True)
        if not self.app_logic.SaveSceneToSlicerDataBundleDirectory(str(bundle), None):
            raise RuntimeError(f"saving the scene into {bundle} failed")
        mrb = folder / "scene.mrb"
        if not self.app_logic.Zip(str(mrb), str(bundle)):
            raise RuntimeError(f"zipping {bundle} into {mrb} failed")
        self.__init__()
        unpacked = folder / "unpacked"
        unpacked.mkdir(exist_ok=True)
        if not self.app_logic.OpenSlicerDataBundle(str(mrb), str(unpacked)):
            raise RuntimeError(f"opening {mrb} failed")
        return self.scene
