"""Scenarios shared by pytest (under ``slicer-core``) and the Slicer self-test (``NoduleSAMTest``).

Each scenario drives :mod:`scene` as the module's buttons do and checks the scene afterwards, so
both paths test the same code. A scenario raises :class:`ScenarioFailure` with what went wrong.
The caller supplies the scene and a real chest CT case (:func:`lidc_case` or :func:`demo_case`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import scene as sc
from .boxes import Candidate, candidates_from_mask
from .volume import CTVolume, read_ct

LIDC_ENV = "NODULESAM_LIDC_DIR"


class ScenarioFailure(AssertionError):
    """A scenario's check failed (kept when Python runs with -O, unlike ``assert``)."""


def check(condition, message: str) -> None:
    if not condition:
        raise ScenarioFailure(message)


def expect_user_error(action, fragment: str, what: str) -> None:
    """``action()`` must raise a ``NoduleSAMError`` whose message contains ``fragment``;
    ``what`` names the case in the failure message."""
    try:
        action()
    except sc.NoduleSAMError as err:
        check(fragment in str(err), f"unclear message for {what}: {err}")
    else:
        raise ScenarioFailure(f"{what} was accepted")


@dataclass
class Case:
    """A real CT cropped around a nodule, and its reference mask (same grid)."""

    volume: CTVolume
    reference: np.ndarray

    def candidates(self) -> list[Candidate]:
        """Candidates as the detector would give them, from the reference mask."""
        return candidates_from_mask(self.reference, None, self.volume.spacing_zyx_mm)

    def user_box(self) -> tuple[int, ...]:
        """A box a user might draw away from the nodule (Add box): 12x12 px on the middle slice."""
        z = self.volume.hu.shape[0] // 2
        return (z, z + 1, 4, 16, 4, 16)


def crop_volume(volume: CTVolume, box_ijk) -> CTVolume:
    """``scene.crop_volume`` with its own voxels (the whole CT can then be freed)."""
    sub = sc.crop_volume(volume, box_ijk)
    sub.hu = sub.hu.copy()
    return sub


def default_lidc_dir() -> Path:
    """``$NODULESAM_LIDC_DIR``, else ``../shared/data/lidc`` beside the repository."""
    here = Path(__file__).resolve()
    return Path(os.environ.get(LIDC_ENV, here.parents[2].parent / "shared" / "data" / "lidc"))


def _read_mask(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


# LIDC-IDRI-0001, nodule 1: consensus box (i, j, k) [299..335, 343..387, 86..93]. The crop keeps
# context in-plane and three of its slices: each slice costs one encoder call per ROI.
LIDC_CROP = (88, 91, 310, 420, 270, 365)
# A click's box is sized by a 3D blob filter (``prompts.box_from_click``), which needs the
# nodule's whole depth: on the 3-slice crop the nodule looks like a cylinder and a small texture
# peak wins. The click scenario uses all of its slices and two more on each side.
LIDC_CLICK_CROP = (84, 96, 310, 420, 270, 365)


def lidc_case(lidc_dir: Path | None = None, crop=LIDC_CROP) -> Case:
    """LIDC-IDRI-0001 (DICOM, read by the engine) around nodule 1, with the 50% consensus."""
    scans = Path(lidc_dir or default_lidc_dir()) / "scans"
    volume = read_ct(next((scans / "LIDC-IDRI-0001").glob("*/*")))
    reference = _read_mask(scans / "LIDC-IDRI-0001.consensus50.nii.gz")
    z0, z1, y0, y1, x0, x1 = crop
    return Case(crop_volume(volume, crop), reference[z0:z1, y0:y1, x0:x1].copy())


def demo_case() -> Case:
    """The demo CT (pyradiomics ``lung1``, fetched and cached by pip) around its lesion."""
    from .demo_data import demo_ct

    image, label = demo_ct()
    volume = read_ct(image)
    reference = _read_mask(label)
    zs, ys, xs = np.nonzero(reference)
    zc = int(np.median(zs))
    box = (max(zc - 1, 0), min(zc + 2, reference.shape[0]), max(ys.min() - 30, 0),
           min(ys.max() + 30, reference.shape[1]), max(xs.min() - 30, 0),
           min(xs.max() + 30, reference.shape[2]))
    z0, z1, y0, y1, x0, x1 = box
    return Case(crop_volume(volume, box), reference[z0:z1, y0:y1, x0:x1].copy())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / float(total)


def _segment_mask(params, roi, shape) -> np.ndarray:
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    segment_id = sc.segment_of_roi(params, roi)
    check(segment_id is not None, f"'{roi.GetName()}' has no segment")
    mask[sc.segment_voxels(params.outputSegmentation, segment_id, params.inputVolume)] = True
    return mask.reshape(shape)


def translate_world(scene, node, offset_ras):
    """Put ``node`` under a new linear transform that moves it by ``offset_ras`` (mm)."""
    import vtk

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "NoduleSAM test shift")
    matrix = vtk.vtkMatrix4x4()
    for axis in range(3):
        matrix.SetElement(axis, 3, float(offset_ras[axis]))
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    return transform


# ---------------------------------------------------------------------------------------------
def volume_round_trip(scene, case: Case):
    """CTVolume -> volume node -> CTVolume keeps the voxels and the geometry exactly."""
    node = sc.add_volume_node(scene, case.volume, "CT")
    back = sc.ct_from_volume_node(node)
    check(np.array_equal(back.hu, case.volume.hu), "voxels changed in the volume node")
    check(np.allclose(back.ijk_to_ras, case.volume.ijk_to_ras, atol=1e-6),
          f"IJK->RAS changed: {back.ijk_to_ras} vs {case.volume.ijk_to_ras}")
    return node


def roi_edits(scene, volume_node, case: Case):
    """Candidate -> ROI -> box is exact; moving, resizing, rotating and transforming the ROI as a
    user would gives the box Slicer's own Crop Volume computes for it."""
    import slicer

    params = sc.Parameters.get_or_create(scene)
    params.inputVolume = volume_node
    candidate = case.candidates()[0]
    roi = sc.add_roi_for_candidate(params, candidate, "Edited ROI")
    check(sc.box_from_roi(roi, volume_node) == candidate.box_ijk,
          f"ROI box {sc.box_from_roi(roi, volume_node)} != candidate {candidate.box_ijk}")
    volume = case.volume
    spacing_ijk = volume.spacing_ijk_mm
    direction_i = volume.ijk_to_ras[:3, 0] / spacing_ijk[0]

    def crop_volume_box():
        extent = [0] * 6
        slicer.vtkSlicerCropVolumeLogic.GetVoxelBasedCropOutputExtent(roi, volume_node, extent,
                                                                      False)
        return (extent[4], extent[5] + 1, extent[2], extent[3] + 1, extent[0], extent[1] + 1)

    z0, z1, y0, y1, x0, x1 = candidate.box_ijk
    center = np.array(roi.GetCenter())
    roi.SetCenter(*(center + 3 * spacing_ijk[0] * direction_i))           # move 3 voxels along i
    check(sc.box_from_roi(roi, volume_node) == (z0, z1, y0, y1, x0 + 3, x1 + 3),
          f"moved ROI gives {sc.box_from_roi(roi, volume_node)}")
    size = np.array(roi.GetSize())
    roi.SetSize(size[0], size[1] + 4 * spacing_ijk[1], size[2])           # 2 voxels more each side
    check(sc.box_from_roi(roi, volume_node) == (z0, z1, y0 - 2, y1 + 2, x0 + 3, x1 + 3),
          f"resized ROI gives {sc.box_from_roi(roi, volume_node)}")
    matrix = roi.GetObjectToNodeMatrix()
    rotation = np.eye(4)
    angle = np.radians(30)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    rotated = sc.matrix_to_array(matrix) @ rotation                      # 30 degrees, axial
    roi.SetAndObserveObjectToNodeMatrix(sc.array_to_matrix(rotated))
    check(sc.box_from_roi(roi, volume_node) == crop_volume_box(),
          f"rotated ROI gives {sc.box_from_roi(roi, volume_node)}, Crop Volume {crop_volume_box()}")
    translate_world(scene, roi, [5.0, -7.5, 2.5])
    check(sc.box_from_roi(roi, volume_node) == crop_volume_box(),
          f"transformed ROI gives {sc.box_from_roi(roi, volume_node)}, Crop Volume "
          f"{crop_volume_box()}")
    scene.RemoveNode(roi)


def refine_and_edit(scene, volume_node, case: Case, logic: sc.Logic | None = None):
    """The Detect -> edit -> Refine loop on a real nodule and a box the user added.

    Checks: one named, coloured segment per ROI that matches the reference; a second Refine does
    nothing; editing one ROI re-refines only it, from cached embeddings; a segment edited by hand
    is kept (and replaced only when asked); errors leave the scene as it was.
    Returns (params, logic) for the next scenario.
    """
    logic = logic or sc.Logic()
    params = sc.Parameters.get_or_create(scene)
    params.inputVolume = volume_node
    nodule, = logic.add_candidates(params, case.candidates())
    check(nodule.GetName() == "Nodule 1", f"first ROI is named '{nodule.GetName()}'")
    added = sc.add_roi(params)                                            # Add box
    check(added.GetName() == "Nodule 2", f"added ROI is named '{added.GetName()}'")
    sc.set_roi_to_box(added, volume_node, case.user_box())
    shape = case.volume.hu.shape

    first = logic.refine(params)
    check(sorted(first.refined) == ["Nodule 1", "Nodule 2"], f"first Refine: {first}")
    segmentation = params.outputSegmentation.GetSegmentation()
    check(segmentation.GetNumberOfSegments() == 2, "expected two segments")
    names = [segmentation.GetNthSegment(n).GetName() for n in range(2)]
    check(sorted(names) == ["Nodule 1", "Nodule 2"], f"segment names {names}")
    colors = {tuple(np.round(segmentation.GetNthSegment(n).GetColor(), 3)) for n in range(2)}
    check(len(colors) == 2, "segments share a colour")
    reference_geometry = params.outputSegmentation.GetNodeReference(
        params.outputSegmentation.GetReferenceImageGeometryReferenceRole())
    check(reference_geometry is volume_node, "the segmentation's reference geometry is not the CT")
    nodule_mask = _segment_mask(params, nodule, shape)
    score = dice(nodule_mask, case.reference)
    check(score > 0.7, f"Nodule 1 Dice vs the reference {score:.3f}")
    z0, z1, y0, y1, x0, x1 = sc.box_from_roi(nodule, volume_node)
    outside = nodule_mask.copy()
    outside[z0:z1, y0:y1, x0:x1] = False
    check(not outside.any(), "Nodule 1's segment leaks out of its ROI")
    table = params.measurementTable.GetTable()
    check(table.GetNumberOfRows() == 2, "measurement table should have two rows")
    volume_mm3 = table.GetColumnByName("Volume (mm3)").GetValue(0)
    expected = nodule_mask.sum() * float(np.prod(case.volume.spacing_zyx_mm))
    check(abs(volume_mm3 - expected) < 1e-3 * expected, f"table volume {volume_mm3} != {expected}")

    second = logic.refine(params)
    check(second.refined == [] and sorted(second.unchanged) == ["Nodule 1", "Nodule 2"]
          and second.encoder_calls == 0, f"second Refine without edits did work: {second}")

    other_hash = sc.segment_tag(segmentation.GetSegment(sc.segment_of_roi(params, added)),
                                 sc.SEGMENT_HASH_TAG)
    size = np.array(nodule.GetSize())
    nodule.SetSize(*(size - [2 * case.volume.spacing_ijk_mm[0], 0, 0]))  # one voxel less each side
    third = logic.refine(params)
    check(third.refined == ["Nodule 1"] and third.unchanged == ["Nodule 2"],
          f"after editing Nodule 1 only: {third}")
    check(third.encoder_calls == 0, f"editing one ROI re-ran the encoder {third.encoder_calls} "
                                    "times; the cached crop embeddings should serve it")
    check(sc.segment_tag(segmentation.GetSegment(sc.segment_of_roi(params, added)),
                          sc.SEGMENT_HASH_TAG) == other_hash, "Nodule 2 was rewritten")

    # The user paints over Nodule 1 by hand, then moves its ROI: Refine keeps the hand edit.
    segment_id = sc.segment_of_roi(params, nodule)
    edited = _segment_mask(params, nodule, shape)
    edited[edited.nonzero()[0].min()] = False                             # erase its first slice
    _paint_by_hand(params, segment_id, edited)
    nodule.SetSize(*size)
    check(logic.refine_states(params)["Nodule 1"] == sc.EDITED, "hand edit not noticed")
    kept = logic.refine(params)
    check(kept.kept_edited == ["Nodule 1"] and kept.refined == [], f"hand edit not kept: {kept}")
    check(np.array_equal(_segment_mask(params, nodule, shape), edited), "hand edit overwritten")
    added_copy = logic.refine(params, edited=sc.ADD)
    check(added_copy.refined == ["Nodule 1"] and segmentation.GetNumberOfSegments() == 3,
          f"Refine with 'add' should add a segment beside the hand-edited one: {added_copy}")
    check(np.array_equal(_segment_mask_by_id(params, segment_id, shape), edited),
          "the hand-edited segment changed when a new one was added")

    # Errors leave the scene as it was.
    stray = sc.add_roi(params)
    sc.set_roi_to_box(stray, volume_node, (shape[0] + 5, shape[0] + 9, 0, 4, 0, 4))
    before = (scene.GetNumberOfNodes(), segmentation.GetNumberOfSegments(),
              params.measurementTable.GetTable().GetNumberOfRows())
    expect_user_error(lambda: logic.refine(params), "outside the CT", "an ROI outside the CT")
    check((scene.GetNumberOfNodes(), segmentation.GetNumberOfSegments(),
           params.measurementTable.GetTable().GetNumberOfRows()) == before,
          "a failed Refine changed the scene")
    scene.RemoveNode(stray)
    return params, logic


def click_refine_move(scene, volume_node, case: Case, logic: sc.Logic | None = None):
    """One click on the nodule -> an ROI around it -> Refine; then the user moves the ROI and
    refines again.

    Checks: the click's ROI holds the click and segments the nodule; the same ROI refined again
    does no work; moved by a voxel it is re-refined and still segments the nodule; a click off
    the CT is a clear error that adds nothing.
    """
    logic = logic or sc.Logic()
    params = sc.Parameters.get_or_create(scene)
    params.inputVolume = volume_node
    shape = case.volume.hu.shape
    zs, ys, xs = np.nonzero(case.reference)
    largest = int(np.argmax(np.bincount(zs)))           # a click on the nodule's widest slice
    on_slice = np.flatnonzero(zs == largest)
    centre = np.array([largest, np.median(ys[on_slice]), np.median(xs[on_slice])]).round().astype(int)
    fiducial = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "NoduleSAM click")
    point_ras = case.volume.zyx_to_ras(centre)
    fiducial.AddControlPoint(*point_ras)
    world = [0.0, 0.0, 0.0]
    fiducial.GetNthControlPointPositionWorld(0, world)
    check(sc.voxel_from_world(world, volume_node) == tuple(int(v) for v in centre),
          "the fiducial's voxel is not the clicked one")
    before = len(params.rois)
    roi = logic.add_click(params, world)
    check(len(params.rois) == before + 1 and roi.GetAttribute(sc.ROI_CLICK_ATTRIBUTE) is not None,
          "a click should add one ROI that remembers the click")
    z0, z1, y0, y1, x0, x1 = sc.box_from_roi(roi, volume_node)
    check(z0 <= centre[0] < z1 and y0 <= centre[1] < y1 and x0 <= centre[2] < x1,
          "the click's ROI does not hold the click")
    first = logic.refine(params)
    check(roi.GetName() in first.refined, f"the click's ROI was not refined: {first}")
    score = dice(_segment_mask(params, roi, shape), case.reference)
    check(score > 0.7, f"a click gave Dice {score:.3f} against the reference")
    again = logic.refine(params)
    check(roi.GetName() in again.unchanged and again.encoder_calls == 0,
          f"refining the unchanged click ROI did work: {again}")
    center = [0.0, 0.0, 0.0]
    roi.GetCenter(center)
    roi.SetCenter(*(np.array(center) + [case.volume.spacing_ijk_mm[0], 0.0, 0.0]))  # 1 voxel
    moved = logic.refine(params)
    check(moved.refined == [roi.GetName()], f"the moved ROI alone should be refined: {moved}")
    score = dice(_segment_mask(params, roi, shape), case.reference)
    check(score > 0.7, f"after moving the ROI, Dice {score:.3f}")
    far = case.volume.zyx_to_ras(np.array(shape) + 50)
    expect_user_error(lambda: logic.add_click(params, far), "outside the CT", "a click off the CT")
    check(len(params.rois) == before + 1, "a click off the CT added an ROI")
    scene.RemoveNode(fiducial)
    return params, logic


def _paint_by_hand(params, segment_id, mask) -> None:
    """Replace a segment's voxels as the Segment Editor does (its tags untouched)."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    nz, ny, nx = mask.shape
    image.SetExtent(0, nx - 1, 0, ny - 1, 0, nz - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
    matrix = vtk.vtkMatrix4x4()
    params.inputVolume.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    check(logic.SetBinaryLabelmapToSegment(image, params.outputSegmentation, segment_id,
                                           logic.MODE_REPLACE), "could not paint the segment")


def _segment_mask_by_id(params, segment_id, shape) -> np.ndarray:
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    mask[sc.segment_voxels(params.outputSegmentation, segment_id, params.inputVolume)] = True
    return mask.reshape(shape)


def snapshot(params) -> dict:
    """What a saved scene must restore: inputs, ROIs (names, boxes), segments, tables."""
    volume_node = params.inputVolume
    segmentation = params.outputSegmentation.GetSegmentation()
    return {
        "settings": {p.name: getattr(params, p.name) for p in sc.PARAMETERS if not sc.is_node(p)},
        "volume": volume_node.GetName(),
        "rois": [(r.GetName(), sc.box_from_roi(r, volume_node), sc.segment_of_roi(params, r))
                 for r in params.rois],
        "segments": {segmentation.GetNthSegmentID(n): (
            segmentation.GetNthSegment(n).GetName(),
            sc.voxel_hash(sc.segment_voxels(params.outputSegmentation,
                                            segmentation.GetNthSegmentID(n), volume_node)))
            for n in range(segmentation.GetNumberOfSegments())},
        "measurements": params.measurementTable.GetTable().GetNumberOfRows(),
        "candidates": params.candidateTable.GetTable().GetNumberOfRows(),
    }


def save_and_reload(params, save_reload, logic: sc.Logic):
    """``save_reload(scene) -> scene`` saves the scene (.mrb) and loads it back; the parameter
    node must restore everything, and a Refine right after finds nothing to do."""
    params.cropMargin = params.cropMargin  # written, as the GUI writes it
    before = snapshot(params)
    scene = save_reload(params.scene)
    restored = sc.Parameters.get_or_create(scene)
    check(restored.inputVolume is not None and restored.outputSegmentation is not None,
          "the parameter node lost its inputs or outputs")
    after = snapshot(restored)
    for key in before:
        check(before[key] == after[key], f"{key} not restored: {before[key]} vs {after[key]}")
    summary = logic.refine(restored)
    check(summary.refined == [] and summary.encoder_calls == 0,
          f"Refine after reload redid work: {summary}")
    return restored


def cancel_and_errors(scene, volume_node, case: Case, logic: sc.Logic | None = None):
    """Cancel before a job's first step (see :func:`cancel_midway` for Cancel after real work),
    a missing detector, and no boxes: the scene stays as it was."""
    import threading

    logic = logic or sc.Logic()
    params = sc.Parameters.get_or_create(scene)
    params.inputVolume = volume_node
    expect_user_error(lambda: logic.refine(params), "no nodule boxes", "Refine without boxes")
    logic.add_candidates(params, case.candidates())
    before = scene.GetNumberOfNodes()
    job = logic.refine_job(params)
    outcome = []

    def cancelled_progress(done, total, text=""):
        raise sc.Cancelled()

    def worker():
        try:
            job.work(cancelled_progress)
        except sc.Cancelled:
            outcome.append("cancelled")

    thread = threading.Thread(target=worker)  # work() runs off the main thread, as in Slicer
    thread.start()
    thread.join()
    check(outcome == ["cancelled"], "Cancel did not stop the work")
    check(scene.GetNumberOfNodes() == before and params.outputSegmentation is None,
          "a cancelled Refine changed the scene")
    params.detector = "/no/such/detector/folder"
    expect_user_error(lambda: logic.detect(params), "neither a registry name", "a missing detector")
    check(scene.GetNumberOfNodes() == before, "a failed Detect changed the scene")
    params.detector = sc.models.DEFAULT_DETECTOR


def work_until_cancelled(job: sc.Job, cancel_when) -> tuple[list, list]:
    """Run ``job.work`` on a worker thread, as the widget does, and press Cancel (set the flag
    that the widget's progress checks) as soon as ``cancel_when(done, total, text)`` holds.

    Returns (outcome, reports): outcome is ``[result]`` or ``["cancelled"]``; reports are the
    progress reports the work made before it stopped.
    """
    import threading

    cancel, reports, outcome = threading.Event(), [], []

    def progress(done, total, text=""):
        if cancel.is_set():
            raise sc.Cancelled()
        reports.append((done, total, text))
        if cancel_when(done, total, text):
            cancel.set()

    def worker():
        try:
            outcome.append(job.work(progress))
        except sc.Cancelled:
            outcome.append("cancelled")

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    return outcome, reports


def cancel_midway(scene, volume_node, case: Case, logic: sc.Logic | None = None):
    """Cancel pressed after real work: in Detect after the detector's first batch of slices, in
    Refine after the first of two nodules. The work stops at the next check, nothing is written
    (no ROI, segment, segmentation or table), and the next Detect and Refine run normally:
    Detect finds what an uninterrupted run finds, Refine segments both nodules."""
    logic = logic or sc.Logic()
    params = sc.Parameters.get_or_create(scene)
    params.inputVolume = volume_node
    params.fpr = "none"  # the detector's own candidates: the classifier rejects the crop's
    config = logic._config(params)
    logic.detector(config).slices_per_batch = 1          # a check after every slice of the crop
    check(case.volume.hu.shape[0] >= 3, "the case needs three slices to cancel in the middle")
    uninterrupted = logic.detect_job(params).work(lambda done, total, text="": None)
    check(len(uninterrupted) >= 1, "the detector found nothing on the case")

    nodes = scene.GetNumberOfNodes()
    outcome, reports = work_until_cancelled(logic.detect_job(params),
                                            lambda done, total, text: text.startswith("detecting")
                                            and done >= 1)
    detected = [r for r in reports if r[2].startswith("detecting")]
    check(outcome == ["cancelled"], f"Cancel did not stop Detect: {outcome}")
    check([r[0] for r in detected] == [1], f"Detect ran on after Cancel: {reports}")
    check(scene.GetNumberOfNodes() == nodes and not params.rois and params.candidateTable is None,
          "a cancelled Detect changed the scene")
    rois = logic.detect(params)
    check([sc.box_from_roi(r, volume_node) for r in rois] == [c.box_ijk for c in uninterrupted],
          "Detect after a cancelled one differs from an uninterrupted Detect")
    for roi in rois:
        scene.RemoveNode(roi)
    params.fpr = sc.models.DEFAULT_FPR

    first, = logic.add_candidates(params, case.candidates())
    second = sc.add_roi(params)
    sc.set_roi_to_box(second, volume_node, case.user_box())
    nodes = scene.GetNumberOfNodes()
    outcome, reports = work_until_cancelled(logic.refine_job(params),
                                            lambda done, total, text: text.startswith("refined")
                                            and done >= 1)
    check(outcome == ["cancelled"], f"Cancel did not stop Refine: {outcome}")
    check((1, 2, "refined 1 of 2") in reports and not any(r[0] == 2 for r in reports),
          f"Refine should stop during the second nodule: {reports}")
    check(logic.refiner(config).encoder_calls > 0, "the refiner did no work before Cancel")
    check(scene.GetNumberOfNodes() == nodes and params.outputSegmentation is None
          and params.measurementTable is None
          and not any(r.GetAttribute(sc.ROI_SEGMENT_ATTRIBUTE) for r in params.rois),
          "a cancelled Refine wrote into the scene")
    summary = logic.refine(params)
    check(sorted(summary.refined) == ["Nodule 1", "Nodule 2"],
          f"Refine after a cancelled one: {summary}")
    score = dice(_segment_mask(params, first, case.volume.hu.shape), case.reference)
    check(score > 0.7, f"after a cancelled Refine, Nodule 1 Dice {score:.3f}")
    return params, logic


def detect(scene, volume_node, logic: sc.Logic | None = None, fpr: str | None = None):
    """Detect on the CT: one ROI per candidate; a second Detect adds no duplicates.

    fpr: the candidate classifier parameter to use (None: the module's default)."""
    logic = logic or sc.Logic()
    params = sc.Parameters.get_or_create(scene)
    params.inputVolume = volume_node
    if fpr is not None:
        params.fpr = fpr
    rois = logic.detect(params)
    names = [r.GetName() for r in rois]
    check(names == [f"Nodule {n}" for n in range(1, len(rois) + 1)], f"ROI names {names}")
    check(params.candidateTable.GetTable().GetNumberOfRows() == len(rois), "candidate table")
    again = logic.detect(params)
    check(again == [], f"a second Detect added {[r.GetName() for r in again]}")
    return rois
