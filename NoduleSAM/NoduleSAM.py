"""NoduleSAM: lung-nodule segmentation on chest CT (nnU-Net v2 detection + SAM box refinement).

This file is thin: the module declaration, the widget (the only code that touches Qt), the
module logic for scripts (a facade) and the self-test. Everything that changes the scene is in
the ``NoduleSAMLib/scene`` package; installing the dependencies is ``NoduleSAMLib/install.py``;
the checks of the self-test are ``NoduleSAMLib/scenarios.py``, which pytest runs too.
"""
import logging
import os
import queue
import threading
import traceback

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from NoduleSAMLib import install  # standard library and packaging only: loads before the engine

POLL_MS = 100


class NoduleSAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "NoduleSAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["NoduleSAM contributors"]
        self.parent.helpText = (
            "Detect lung nodules on a chest CT (nnU-Net v2), adjust their boxes, and segment each "
            "box with a SAM-family model (LiteMedSAM bundled). See "
            "<a href='https://github.com/nodulesam/NoduleSAM/blob/main/docs/slicer.md'>the guide</a>.")
        self.parent.acknowledgementText = (
            "Built on nnU-Net v2, Segment Anything, LiteMedSAM and LIDC-IDRI (TCIA, CC BY 3.0).")


def parameterPackClass():
    """The ``@parameterNodeWrapper`` class for ``scene.PARAMETERS`` (same names, same storage)."""
    from typing import Annotated

    from NoduleSAMLib import scene
    from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper

    annotations = {}
    for parameter in scene.PARAMETERS:
        kind = getattr(slicer, parameter.kind) if isinstance(parameter.kind, str) else parameter.kind
        extras = [Default(parameter.default)] if parameter.default is not None else []
        if parameter.choices:
            extras.append(Choice(list(parameter.choices)))
        elif parameter.minimum is not None:
            extras.append(WithinRange(parameter.minimum, parameter.maximum))
        annotations[parameter.name] = Annotated[(kind, *extras)] if extras else kind
    return parameterNodeWrapper(type("NoduleSAMParameterNode", (), {"__annotations__": annotations}))


class NoduleSAMLogic(ScriptedLoadableModuleLogic):
    """NoduleSAM for scripts, called as other modules' logic is::

        from NoduleSAM import NoduleSAMLogic
        segmentationNode = NoduleSAMLogic().autoSegment(volumeNode, sensitivity="high")

    A facade over ``NoduleSAMLib.scene``: ``engine`` (a ``scene.Logic``) keeps the loaded models
    between calls and runs the jobs the widget's buttons start.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from NoduleSAMLib import scene

        self.scene = scene
        self.engine = scene.Logic()

    def autoSegment(self, volumeNode, **settings):
        """Detect, then refine every box; returns the segmentation node (one segment per nodule)."""
        return self.scene.auto_segment(volumeNode, self.engine, **settings)

    def detect(self, volumeNode, **settings):
        """Detect: returns the ROI nodes added (one per new candidate)."""
        return self.engine.detect(self.scene.parameters_for(volumeNode, **settings))

    def refine(self, volumeNode, edited="keep", **settings):
        """Refine the ROIs as they are now; returns a ``scene.RefineSummary``."""
        return self.engine.refine(self.scene.parameters_for(volumeNode, **settings), edited)


class NoduleSAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._guiConnection = None
        self._job = None
        self._messages = queue.Queue()
        self._cancel = threading.Event()

    # -- setup ---------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NoduleSAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.ui.installButton.connect("clicked(bool)", self.onInstall)
        self.ui.detectButton.connect("clicked(bool)", lambda: self.onDetect())
        self.ui.addBoxButton.connect("clicked(bool)", self.onAddBox)
        self.ui.clickNoduleButton.connect("clicked(bool)", self.onClickNodule)
        self.ui.refineButton.connect("clicked(bool)", lambda: self.onRefine())
        self.ui.autoSegmentButton.connect("clicked(bool)", lambda: self.onDetect(then=self.onRefine))
        self.ui.cancelButton.connect("clicked(bool)", self._cancel.set)
        self.ui.saveSegmentationButton.connect("clicked(bool)", self.onSaveSegmentation)
        for parameter, view in (("candidateTable", self.ui.candidateTableView),
                                ("measurementTable", self.ui.measurementTableView)):
            view.connect("clicked(QModelIndex)",
                         lambda index, p=parameter, v=view: self.onTableClicked(p, v, index))

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self.onPoll)
        self._tableTimer = qt.QTimer()  # coalesces ROI drags into one table update
        self._tableTimer.setSingleShot(True)
        self._tableTimer.setInterval(300)
        self._tableTimer.connect("timeout()", self.updateCandidateTable)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndClose)
        self.showDependencies()

    def showDependencies(self):
        problem = install.environment_problem()
        missing = [] if problem else install.missing()
        self.ui.dependencyCollapsibleButton.visible = bool(problem or missing)
        self.ui.installButton.enabled = not problem
        self.ui.workflowCollapsibleButton.enabled = not (problem or missing)
        if problem:
            self.ui.dependencyLabel.text = problem
            return
        if missing:
            self.ui.dependencyLabel.text = (
                "NoduleSAM needs Python packages that are not installed yet:\n  "
                + "\n  ".join(missing) + "\nand their dependencies. Press Install (a few GB for "
                "PyTorch; needs internet).")
            return
        from NoduleSAMLib import scene

        self.scene = scene
        self.logic = self.logic or NoduleSAMLogic()
        self.ParameterPack = parameterPackClass()
        self.initializeParameterNode()

    def onInstall(self):
        """torch through the PyTorch extension, the rest with pip one package at a time, never
        replacing torch, SimpleITK, requests or numpy (``NoduleSAMLib/install.py``)."""
        if not slicer.util.confirmOkCancelDisplay(
                "NoduleSAM will install:\n  " + "\n  ".join(install.missing())
                + "\nand their dependencies, at the versions NoduleSAM is tested with.\n\nContinue?",
                "NoduleSAM: install dependencies"):
            return
        try:
            import PyTorchUtils
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        except ImportError:
            torchLogic = None
        try:
            with slicer.util.WaitCursor():
                install.install_into_slicer(slicer.util.pip_install, torchLogic, log=self.showInstallStep)
        except Exception as err:
            slicer.util.errorDisplay(f"Installing dependencies failed: {err}",
                                     detailedText=traceback.format_exc())
            return
        self.showDependencies()

    def showInstallStep(self, text):
        self.ui.dependencyLabel.text = text
        slicer.app.processEvents()

    # -- parameter node -----------------------------------------------------------------------
    def initializeParameterNode(self):
        params = self.scene.Parameters.get_or_create(slicer.mrmlScene)
        if params.inputVolume is None:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume is not None and not volume.IsA("vtkMRMLLabelMapVolumeNode"):
                params.inputVolume = volume
        self.setParameterNode(self.ParameterPack(params.node))

    def setParameterNode(self, parameterNode):
        """Bind the GUI to ``parameterNode`` (None: unbind). A running job keeps its own
        parameters (``Job.params``), so it finishes whatever the GUI is bound to."""
        if self._parameterNode is not None:
            if self._guiConnection is not None:
                self._parameterNode.disconnectGui(self._guiConnection)
                self._guiConnection = None
            self.removeObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if parameterNode is not None:
            self._guiConnection = parameterNode.connectGui(self.ui)
            self.addObserver(parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent,
                             self.onParameterNodeModified)
            self.onParameterNodeModified()

    def params(self):
        """The module's parameters: the bound node's, or (the module left, the GUI unbound) the
        scene's NoduleSAM node, so no callback ever meets a None parameter node."""
        if self._parameterNode is None:
            return self.scene.Parameters.get_or_create(slicer.mrmlScene)
        return self.scene.Parameters(self._parameterNode.parameterNode)

    def onParameterNodeModified(self, caller=None, event=None):
        if self._parameterNode is None:  # the module was left
            return
        params = self.params()
        self.ui.candidateTableView.setMRMLTableNode(params.candidateTable)
        self.ui.measurementTableView.setMRMLTableNode(params.measurementTable)
        for roi in params.rois:
            if not self.hasObserver(roi, slicer.vtkMRMLMarkupsNode.PointModifiedEvent,
                                    self.onRoiModified):
                self.addObserver(roi, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onRoiModified)
        self.updateButtons()

    def onRoiModified(self, caller=None, event=None):
        self._tableTimer.start()

    def updateCandidateTable(self):
        if self._parameterNode is not None and self._job is None:
            self.scene.update_candidate_table(self.params())

    def updateButtons(self):
        busy = self._job is not None
        haveVolume = self._parameterNode is not None and self.params().inputVolume is not None
        haveRois = haveVolume and bool(self.params().rois)
        self.ui.detectButton.enabled = haveVolume and not busy
        self.ui.autoSegmentButton.enabled = haveVolume and not busy
        self.ui.addBoxButton.enabled = haveVolume and not busy
        self.ui.clickNoduleButton.enabled = haveVolume and not busy
        self.ui.refineButton.enabled = haveRois and not busy
        self.ui.cancelButton.enabled = busy
        self.ui.inputsCollapsibleButton.enabled = not busy
        self.ui.saveSegmentationButton.enabled = (haveVolume and not busy
                                                  and self.params().outputSegmentation is not None)

    # -- scene events ---------------------------------------------------------------------------
    def cleanup(self):
        """The module is being destroyed (Slicer closes, or the module is reloaded)."""
        self._cancel.set()
        self._timer.stop()
        self._tableTimer.stop()
        self.setParameterNode(None)  # disconnects the GUI
        self.removeObservers()

    def enter(self):
        if self.logic is not None:
            self.initializeParameterNode()  # a running job (self._job) stays as it is

    def exit(self):
        """Unbind the GUI; a running job goes on, its progress shown and its result written on
        return to the module or not (its finish needs only its own parameters)."""
        self.setParameterNode(None)
        self.removeObservers(self.onRoiModified)

    def onSceneStartClose(self, caller, event):
        self._cancel.set()
        self.exit()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered and self.logic is not None:
            self.initializeParameterNode()

    # -- actions --------------------------------------------------------------------------------
    def onDetect(self, then=None):
        self.startJob(lambda: self.logic.engine.detect_job(self.params()), then)

    def onRefine(self, params=None):
        """params: the Detect job's, when Auto-segment chains Refine after it."""
        params = params or self.params()
        try:
            plan = self.logic.engine.plan_refine(params)  # reads and hashes the CT once for the whole Refine
        except self.scene.NoduleSAMError as err:
            slicer.util.errorDisplay(str(err), windowTitle="NoduleSAM")
            return
        states = self.logic.engine.refine_states(params, plan)
        edited = sorted(name for name, state in states.items() if state == self.scene.EDITED)
        policy = self.scene.KEEP
        if edited:
            box = qt.QMessageBox(slicer.util.mainWindow())
            box.setWindowTitle("NoduleSAM: segments edited by hand")
            box.setText("You edited these segments by hand: " + ", ".join(edited)
                        + ".\nWhat should Refine do with them?")
            keep = box.addButton("Keep my edits", qt.QMessageBox.AcceptRole)
            replace = box.addButton("Replace them", qt.QMessageBox.DestructiveRole)
            add = box.addButton("Add new segments beside them", qt.QMessageBox.ActionRole)
            box.setDefaultButton(keep)
            box.exec_()
            policy = {replace: self.scene.REPLACE, add: self.scene.ADD}.get(box.clickedButton(),
                                                                           self.scene.KEEP)
        self.startJob(lambda: self.logic.engine.refine_job(params, policy, plan))

    def onAddBox(self):
        params = self.params()
        roi = self.scene.add_roi(params)
        markupsLogic = slicer.modules.markups.logic()
        markupsLogic.SetActiveList(roi)
        markupsLogic.StartPlaceMode(False)
        self.ui.statusLabel.text = f"Click and drag in a slice view to place '{roi.GetName()}'."

    def onClickNodule(self):
        """Place one fiducial; where it lands, the logic proposes the nodule's box (an ROI)."""
        fiducial = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "NoduleSAM click")
        fiducial.CreateDefaultDisplayNodes()
        self.addObserver(fiducial, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onClickPlaced)
        markupsLogic = slicer.modules.markups.logic()
        markupsLogic.SetActiveList(fiducial)
        markupsLogic.StartPlaceMode(False)
        self.ui.statusLabel.text = "Click on the nodule in a slice view."

    def onClickPlaced(self, fiducial, event=None):
        self.removeObserver(fiducial, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onClickPlaced)
        world = [0.0, 0.0, 0.0]
        fiducial.GetNthControlPointPositionWorld(0, world)
        slicer.mrmlScene.RemoveNode(fiducial)
        try:
            roi = self.logic.engine.add_click(self.params(), world)
        except self.scene.NoduleSAMError as err:
            slicer.util.errorDisplay(str(err))
            return
        self.ui.statusLabel.text = f"'{roi.GetName()}' placed around the click: adjust it, then Refine."
        self.updateButtons()

    def onTableClicked(self, tableParameter, view, index):
        """Centre the slice views on the ROI of the clicked row (of either table)."""
        table = getattr(self.params(), tableParameter)
        model = view.model()  # a sort proxy over qMRMLTableModel: map to the table's own row
        row = model.mapToSource(index).row() if hasattr(model, "mapToSource") else index.row()
        roi = self.scene.roi_of_table_row(table, row) if table is not None else None
        if roi is not None and roi.GetNumberOfControlPoints():
            slicer.modules.markups.logic().JumpSlicesToNthPointInMarkup(roi.GetID(), 0, True)

    def onSaveSegmentation(self):
        node = self.params().outputSegmentation
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Save segmentation",
                                              f"{node.GetName()}.seg.nrrd", "Segmentation (*.seg.nrrd)")
        if path and not slicer.util.saveNode(node, path):
            slicer.util.errorDisplay(f"Could not save {path}", windowTitle="NoduleSAM")

    # -- background work: work() on a thread, finish() back on the main thread -----------------
    def startJob(self, makeJob, then=None):
        try:
            job = makeJob()  # checks the inputs; raises before anything in the scene changes
        except self.scene.NoduleSAMError as err:
            slicer.util.errorDisplay(str(err), windowTitle="NoduleSAM")
            return
        self._job, self._then = job, then
        self._cancel.clear()
        self.ui.progressBar.setRange(0, 0)
        self.ui.statusLabel.text = f"{job.title}: starting"
        cancel, messages, cancelled = self._cancel, self._messages, self.scene.Cancelled

        def progress(done, total, text=""):
            if cancel.is_set():
                raise cancelled()
            messages.put(("progress", done, total, text))

        def run():
            try:
                messages.put(("done", job.work(progress)))
            except BaseException as err:  # reported on the main thread
                messages.put(("error", err, traceback.format_exc()))

        threading.Thread(target=run, name=f"NoduleSAM {job.title}", daemon=True).start()
        self._timer.start()
        self.updateButtons()

    def onPoll(self):
        while not self._messages.empty():
            kind, *rest = self._messages.get()
            if kind == "progress":
                done, total, text = rest
                self.ui.progressBar.setRange(0, max(total, 1))
                self.ui.progressBar.setValue(done)
                self.ui.statusLabel.text = f"{self._job.title}: {text}"
            else:
                self._timer.stop()
                job, then = self._job, self._then
                self._job = None
                self.ui.progressBar.setRange(0, 1)
                self.ui.progressBar.setValue(0)
                if kind == "done":
                    self.finishJob(job, rest[0], then)
                else:
                    self.reportError(job, *rest)
                self.updateButtons()

    def finishJob(self, job, result, then):
        try:
            summary = job.finish(result)
        except self.scene.NoduleSAMError as err:
            slicer.util.errorDisplay(str(err), windowTitle="NoduleSAM")
            return
        if isinstance(summary, list):
            self.ui.statusLabel.text = f"{job.title}: {len(summary)} new nodule box(es)"
        else:
            self.ui.statusLabel.text = (
                f"{job.title}: refined {len(summary.refined)}, unchanged {len(summary.unchanged)}, "
                f"kept {len(summary.kept_edited)} edited by hand")
            if summary.messages:
                slicer.util.warningDisplay("\n".join(summary.messages), windowTitle="NoduleSAM")
        self.onParameterNodeModified()
        if then is not None:
            then(job.params)

    def reportError(self, job, error, details):
        if isinstance(error, self.scene.Cancelled):
            self.ui.statusLabel.text = f"{job.title}: cancelled; the scene is unchanged"
        elif isinstance(error, self.scene.NoduleSAMError):
            self.ui.statusLabel.text = f"{job.title}: failed"
            slicer.util.errorDisplay(str(error), windowTitle="NoduleSAM")
        else:
            logging.error(details)
            slicer.util.errorDisplay(f"{job.title} failed: {error}", detailedText=details,
                                     windowTitle="NoduleSAM")


class NoduleSAMTest(ScriptedLoadableModuleTest):
    """Runs ``NoduleSAMLib.scenarios`` (the pytest scenarios) on Slicer's own scene."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        missing = install.environment_problem() or ", ".join(install.missing())
        if missing:
            self.delayDisplay(f"NoduleSAM self-test skipped: {missing}")
            return
        self.test_parameter_pack()
        self.test_scenarios()

    def test_parameter_pack(self):
        """The GUI's ``@parameterNodeWrapper`` pack (parameterPackClass) and ``scene.Parameters``
        read and write the same parameter node, each seeing what the other wrote."""
        from NoduleSAMLib import scene

        self.setUp()
        params = scene.Parameters.get_or_create(slicer.mrmlScene)
        pack = parameterPackClass()(params.node)
        for parameter in scene.PARAMETERS:
            self.assertEqual(getattr(pack, parameter.name), getattr(params, parameter.name),
                             parameter.name)
        pack.cropMargin, pack.expansion, pack.mirroring = 17, 0.25, True
        self.assertEqual((params.cropMargin, params.expansion, params.mirroring), (17, 0.25, True))
        params.sensitivity, params.refiner = scene.fpr_mod.SENSITIVITIES[0], "litemedsam"
        self.assertEqual((pack.sensitivity, pack.refiner), (params.sensitivity, "litemedsam"))
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "pack test")
        pack.inputVolume = volume
        self.assertIs(params.inputVolume, volume)
        params.inputVolume = None
        self.assertIsNone(pack.inputVolume)

    def test_scenarios(self):
        from NoduleSAMLib import scenarios

        self.delayDisplay("Loading a chest CT")
        lidc = scenarios.default_lidc_dir()
        case = scenarios.lidc_case(lidc) if (lidc / "scans").is_dir() else scenarios.demo_case()
        volumeNode = scenarios.volume_round_trip(slicer.mrmlScene, case)
        self.delayDisplay("ROI edits -> voxel boxes")
        scenarios.roi_edits(slicer.mrmlScene, volumeNode, case)
        self.delayDisplay("Cancel and errors leave the scene as it was")
        scenarios.cancel_and_errors(slicer.mrmlScene, volumeNode, case)
        self.setUp()
        volumeNode = scenarios.volume_round_trip(slicer.mrmlScene, case)
        self.delayDisplay("Cancel in the middle of Detect and of Refine")
        scenarios.cancel_midway(slicer.mrmlScene, volumeNode, case)
        self.setUp()
        volumeNode = scenarios.volume_round_trip(slicer.mrmlScene, case)
        self.delayDisplay("Refine, edit, refine again")
        params, logic = scenarios.refine_and_edit(slicer.mrmlScene, volumeNode, case)
        self.delayDisplay("Save and reload the scene")
        scenarios.save_and_reload(params, self.saveAndReload, logic)
        self.setUp()
        if (lidc / "scans").is_dir():  # the click's blob filter needs the nodule's whole depth
            case = scenarios.lidc_case(lidc, scenarios.LIDC_CLICK_CROP)
        volumeNode = scenarios.volume_round_trip(slicer.mrmlScene, case)
        self.delayDisplay("Click a nodule, refine, move its box, refine again")
        scenarios.click_refine_move(slicer.mrmlScene, volumeNode, case)
        self.delayDisplay("NoduleSAM self-test passed")

    @staticmethod
    def saveAndReload(scene):
        path = os.path.join(slicer.app.temporaryPath, "NoduleSAMTest.mrb")
        if not slicer.util.saveScene(path):
            raise RuntimeError(f"saving {path} failed")
        slicer.mrmlScene.Clear(0)
        slicer.util.loadScene(path)
        return slicer.mrmlScene
