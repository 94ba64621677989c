"""The Slicer module's scene logic under slicer-core (real MRML, no GUI) on a real chest CT.

The checks live in ``NoduleSAMLib/scenarios.py`` and run unchanged in Slicer's self-test.
Skips when slicer-core or the shared LIDC data (LIDC-IDRI-0001) is absent.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core vtk)")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest_slicer import HeadlessScene, lidc_dir  # noqa: E402
from NoduleSAMLib import models, scenarios  # noqa: E402
from NoduleSAMLib import scene as sc  # noqa: E402
from NoduleSAMLib.errors import NoduleSAMError  # noqa: E402
from NoduleSAMLib.measure import measure_nodule  # noqa: E402


@pytest.fixture(scope="module")
def case():
    folder = lidc_dir()
    if not (folder / "scans" / "LIDC-IDRI-0001").is_dir():
        pytest.skip(f"shared LIDC data not found at {folder} (set NODULESAM_LIDC_DIR)")
    return scenarios.lidc_case(folder)


@pytest.fixture
def headless():
    return HeadlessScene()


def test_volume_node_round_trip(headless, case):
    scenarios.volume_round_trip(headless.scene, case)


def test_volume_node_rejects_non_ct(headless, case):
    params = sc.Parameters.get_or_create(headless.scene)
    with pytest.raises(NoduleSAMError, match="select a CT volume"):
        sc.Logic().refine(params)
    flat = scenarios.Case(sc.CTVolume(np.full((3, 8, 8), 40.0, np.float32), case.volume.ijk_to_ras),
                          case.reference)
    params.inputVolume = sc.add_volume_node(headless.scene, flat.volume, "not a CT")
    with pytest.raises(NoduleSAMError, match="constant"):
        sc.Logic().refine(params)


def test_roi_edits_give_crop_volume_boxes(headless, case):
    volume_node = sc.add_volume_node(headless.scene, case.volume)
    scenarios.roi_edits(headless.scene, volume_node, case)


def test_roi_follows_a_transformed_volume(headless, case):
    """A CT under a parent transform: ROIs follow it, boxes stay in the CT's voxels."""
    volume_node = sc.add_volume_node(headless.scene, case.volume)
    scenarios.translate_world(headless.scene, volume_node, [12.0, -3.0, 5.0])
    params = sc.Parameters.get_or_create(headless.scene)
    params.inputVolume = volume_node
    candidate = case.candidates()[0]
    roi = sc.add_roi_for_candidate(params, candidate)
    assert roi.GetTransformNodeID() == volume_node.GetTransformNodeID()
    assert sc.box_from_roi(roi, volume_node) == candidate.box_ijk


def test_cancel_and_errors_leave_the_scene(headless, case):
    volume_node = sc.add_volume_node(headless.scene, case.volume)
    scenarios.cancel_and_errors(headless.scene, volume_node, case)


def test_parameters_use_the_parameter_node_wrapper_format(headless):
    params = sc.Parameters.get_or_create(headless.scene)
    assert sc.Parameters.get_or_create(headless.scene).node is params.node
    node = params.node
    assert node.GetParameter("refiner") == models.DEFAULT_REFINER
    assert node.GetParameter("mirroring") == "False"
    params.cropMargin, params.expansion, params.mirroring = 12, 0.1, True
    assert (node.GetParameter("cropMargin"), node.GetParameter("expansion"),
            node.GetParameter("mirroring")) == ("12", "0.1", "True")
    assert (params.cropMargin, params.expansion, params.mirroring) == (12, 0.1, True)
    with pytest.raises(AttributeError):
        params.no_such_parameter = 1


def test_refine_edit_save_reload(headless, case, tmp_path):
    """Refine, edit one ROI, hand-edit a segment, then save the scene as .mrb and reload it."""
    volume_node = sc.add_volume_node(headless.scene, case.volume)
    params, logic = scenarios.refine_and_edit(headless.scene, volume_node, case)
    scenarios.save_and_reload(params, lambda scene: headless.save_reload(scene, tmp_path), logic)
    assert (tmp_path / "scene.mrb").stat().st_size > 0


def test_click_refine_move(headless, case):
    """A fiducial click -> an ROI -> Refine; move the ROI, Refine again (on the nodule's whole
    depth: ``scenarios.LIDC_CLICK_CROP``)."""
    click_case = scenarios.lidc_case(lidc_dir(), scenarios.LIDC_CLICK_CROP)
    volume_node = sc.add_volume_node(headless.scene, click_case.volume)
    scenarios.click_refine_move(headless.scene, volume_node, click_case)


class ReferenceDetector:
    """Stands in for nnU-Net: 'detects' the reference mask."""

    def __init__(self, mask):
        self.mask = mask

    def predict(self, volume, progress=None):
        from NoduleSAMLib.detect import Detection

        return Detection(self.mask.astype(np.float32), self.mask)


def test_detect_with_a_stand_in_detector(headless, case):
    """Detect -> ROIs named Nodule 1..n with score and prompts; Detect again adds none. Without
    the classifier (``fpr`` = none), so the score is the stand-in's."""
    volume_node = sc.add_volume_node(headless.scene, case.volume)
    roi, = scenarios.detect(headless.scene, volume_node, sc.Logic(ReferenceDetector(case.reference)), fpr="none")
    assert roi.GetAttribute(sc.ROI_SCORE_ATTRIBUTE) == "1.0000"
    assert sc.box_from_roi(roi, volume_node) == case.candidates()[0].box_ijk
    candidate, _ = sc.candidate_from_roi(roi, volume_node, case.volume.hu.shape)
    assert sorted(candidate.slice_boxes) == sorted(case.candidates()[0].slice_boxes)
    # the detector's probability travels with the ROI (saved with the scene) ...
    z0, z1, y0, y1, x0, x1 = candidate.box_ijk
    np.testing.assert_allclose(candidate.prior(), case.reference[z0:z1, y0:y1, x0:x1], atol=1 / 255)
    # ... and stops counting once the user edits the box: SAM alone refines an edited box
    roi.SetSize(*(np.array(roi.GetSize()) + 4 * case.volume.spacing_ijk_mm))
    edited, _ = sc.candidate_from_roi(roi, volume_node, case.volume.hu.shape)
    assert edited.box_ijk != candidate.box_ijk and edited.prior() is None
    roi.SetAttribute(sc.ROI_PRIOR_ATTRIBUTE, "{not json")
    assert sc.candidate_from_roi(roi, volume_node, case.volume.hu.shape)[0].detector_probability is None


def test_detect_scores_with_the_classifier_at_the_chosen_sensitivity(headless, case):
    """With the bundled classifier, an ROI carries the classifier's score, and Detect keeps a
    candidate exactly when that score reaches the threshold of the chosen sensitivity."""
    from NoduleSAMLib.fpr import SENSITIVITIES, FalsePositiveReducer

    reducer = FalsePositiveReducer(models.fpr_folder(models.DEFAULT_FPR))
    expected = float(reducer.score(case.volume.hu, case.volume.spacing_zyx_mm, case.candidates())[0])
    params = sc.Parameters.get_or_create(headless.scene)
    assert params.fpr == models.DEFAULT_FPR and params.sensitivity in SENSITIVITIES
    for sensitivity in SENSITIVITIES:
        scene = HeadlessScene().scene
        volume_node = sc.add_volume_node(scene, case.volume)
        params = sc.Parameters.get_or_create(scene)
        params.inputVolume, params.sensitivity = volume_node, sensitivity
        rois = sc.Logic(ReferenceDetector(case.reference)).detect(params)
        assert len(rois) == (expected >= reducer.threshold(sensitivity)), sensitivity
        for roi in rois:
            assert float(roi.GetAttribute(sc.ROI_SCORE_ATTRIBUTE)) == pytest.approx(expected, abs=1e-4)


def test_detect(headless, case):
    try:
        models.detector_folder(models.DEFAULT_DETECTOR)
    except NoduleSAMError as err:
        pytest.skip(f"bundled detector not available yet: {err}")
    volume_node = sc.add_volume_node(headless.scene, case.volume)
    scenarios.detect(headless.scene, volume_node)


def test_tables_show_titles_as_headers_and_row_0_is_the_first_nodule(headless, case):
    """Without ``UseColumnTitleAsColumnHeader`` qMRMLTableModel shows the column names as row 0
    and a click on a row jumps to the nodule before it. Row r of each table is its r-th ROI; in
    the measurement table (ROIs with a segment only) that is not ``params.rois[r]``."""
    volume_node = sc.add_volume_node(headless.scene, case.volume)
    params = sc.Parameters.get_or_create(headless.scene)
    params.inputVolume = volume_node
    first, = sc.Logic().add_candidates(params, case.candidates())
    second = sc.add_roi(params)
    sc.set_roi_to_box(second, volume_node, case.user_box())
    sc.update_candidate_table(params)
    table = params.candidateTable
    assert table.GetUseColumnTitleAsColumnHeader()
    assert table.GetNumberOfRows() == 2
    assert [table.GetCellText(r, 0) for r in range(2)] == ["Nodule 1", "Nodule 2"]
    assert [sc.roi_of_table_row(table, r) for r in range(3)] == [first, second, None]
    # only the second ROI has a segment: it is row 0 of the measurement table
    segmentation = sc.ensure_segmentation(params)
    box = sc.box_from_roi(second, volume_node)
    mask = np.zeros([box[1] - box[0], box[3] - box[2], box[5] - box[4]], bool)
    mask[:, 2:6, 2:6] = True
    second.SetAttribute(sc.ROI_SEGMENT_ATTRIBUTE, sc.write_segment(
        segmentation, volume_node, None, "Nodule 2", (1, 0, 0), box, mask, "key"))
    sc.update_measurement_table(params, case.volume)
    measurements = params.measurementTable
    assert measurements.GetUseColumnTitleAsColumnHeader()
    assert measurements.GetNumberOfRows() == 1 and measurements.GetCellText(0, 0) == "Nodule 2"
    assert sc.roi_of_table_row(measurements, 0) is second
    # measured inside the segment's box, the numbers are those of a CT-sized mask
    full = np.zeros(case.volume.hu.shape, bool)
    full[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = mask
    expected = measure_nodule(case.volume, full)
    for column, key in (("Volume (mm3)", "volume_mm3"), ("Long axis (mm)", "long_axis_mm"),
                        ("Short axis (mm)", "short_axis_mm"), ("Mean HU", "mean_hu")):
        value = measurements.GetTable().GetColumnByName(column).GetValue(0)
        assert value == pytest.approx(expected[key], rel=1e-6), column
    # and the read-out beside them is the engine's for that mask
    from NoduleSAMLib.management import readout
    from NoduleSAMLib.nodule_type import classify_nodule

    expected |= classify_nodule(case.volume, full)
    expected |= readout(expected)
    assert expected["type"] in ("solid", "part-solid", "ground-glass")
    for column, key in (("Type", "type"), ("Lung-RADS", "lung_rads"), ("Fleischner", "fleischner")):
        assert measurements.GetCellText(0, measurements.GetColumnIndex(column)) == (expected[key] or ""), column
    assert measurements.GetTable().GetColumnByName("Mean diameter (mm)").GetValue(0) == \
        pytest.approx(expected["mean_diameter_mm"], rel=1e-6)
    headless.scene.RemoveNode(second)
    assert sc.roi_of_table_row(measurements, 0) is None


def test_detector_prompts_stay_with_the_ct_they_were_detected_on(headless, case):
    """Prompts and priors are voxels of the CT used at Detect: on another volume node (same
    grid or not) they are dropped with a message, and the box alone is refined."""
    volume_node = sc.add_volume_node(headless.scene, case.volume, "CT A")
    params = sc.Parameters.get_or_create(headless.scene)
    params.inputVolume, params.fpr = volume_node, "none"
    roi, = sc.Logic(ReferenceDetector(case.reference)).detect_job(params).run()
    shape = case.volume.hu.shape
    on_a, messages = sc.candidate_from_roi(roi, volume_node, shape)
    assert on_a.slice_boxes and on_a.detector_probability is not None and not messages
    other = sc.add_volume_node(headless.scene, case.volume, "CT B")
    on_b, messages = sc.candidate_from_roi(roi, other, shape)
    assert on_b.slice_boxes == {} and on_b.detector_probability is None and on_b.score is None
    assert len(messages) == 1 and "another CT volume" in messages[0]
    params.inputVolume = other
    plan = sc.Logic().plan_refine(params)
    assert plan.items[0]["candidate"].slice_boxes == {}
    params.inputVolume = volume_node
    headless.scene.RemoveNode(volume_node)  # the source is gone: nothing it detected is used
    assert sc.candidate_from_roi(roi, other, shape)[0].slice_boxes == {}


def test_damaged_roi_attributes_are_ignored_with_a_message(headless, case):
    volume_node = sc.add_volume_node(headless.scene, case.volume)
    params = sc.Parameters.get_or_create(headless.scene)
    params.inputVolume = volume_node
    roi, = sc.Logic().add_candidates(params, case.candidates())
    shape = case.volume.hu.shape
    for damaged in ("{not json", "[1, 2]", '{"1": [1, 2]}', '{"x": [1, 2, 3, 4]}',
                    '{"1": ["a", 2, 3, 4]}', '{"1": [NaN, 2, 3, 4]}'):
        roi.SetAttribute(sc.ROI_PROMPTS_ATTRIBUTE, damaged)
        candidate, messages = sc.candidate_from_roi(roi, volume_node, shape)
        assert candidate.slice_boxes == {}, damaged
        assert any("prompts are damaged" in m for m in messages), damaged
    roi.SetAttribute(sc.ROI_PROMPTS_ATTRIBUTE, "{}")
    roi.SetAttribute(sc.ROI_SCORE_ATTRIBUTE, "not a number")
    candidate, messages = sc.candidate_from_roi(roi, volume_node, shape)
    assert candidate.score is None and any("score is not a number" in m for m in messages)
    sc.update_candidate_table(params)  # the table shows no score rather than raising
    assert np.isnan(params.candidateTable.GetTable().GetColumnByName("Score").GetValue(0))
    assert sc.Logic().refine_states(params) == {roi.GetName(): sc.NEW}


def test_refine_plans_once(headless, case, monkeypatch):
    """The widget plans (reads and hashes the CT), asks about hand edits, then hands the same
    plan to the job: one CT read and one hash per Refine, not two."""
    volume_node = sc.add_volume_node(headless.scene, case.volume)
    params = sc.Parameters.get_or_create(headless.scene)
    params.inputVolume = volume_node
    logic = sc.Logic()
    logic.add_candidates(params, case.candidates())
    calls = []
    from NoduleSAMLib.scene import logic as scene_logic

    for name in ("ct_from_volume_node", "volume_fingerprint"):  # counted, still run
        real = getattr(scene_logic, name)
        monkeypatch.setattr(scene_logic, name,
                            lambda *a, real=real, name=name: calls.append(name) or real(*a))
    plan = logic.plan_refine(params)
    assert logic.refine_states(params, plan) == {"Nodule 1": sc.NEW}
    job = logic.refine_job(params, sc.KEEP, plan)
    assert sorted(calls) == ["ct_from_volume_node", "volume_fingerprint"] and job.title == "Refine"
    params.inputVolume = sc.add_volume_node(headless.scene, case.volume, "another CT")
    with pytest.raises(NoduleSAMError, match="CT changed"):
        logic.refine_job(params, sc.KEEP, plan)


def test_a_chosen_segmentation_is_not_moved(headless, case):
    """Refine writes into the user's segmentation without re-parenting it (which would move
    their other segments); one in another frame is refused before any work."""
    volume_node = sc.add_volume_node(headless.scene, case.volume)
    params = sc.Parameters.get_or_create(headless.scene)
    params.inputVolume = volume_node
    sc.Logic().add_candidates(params, case.candidates())
    theirs = headless.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "their segmentation")
    theirs.GetSegmentation().AddEmptySegment("Liver", "Liver")
    shift = scenarios.translate_world(headless.scene, theirs, [10.0, 0.0, 0.0])
    params.outputSegmentation = theirs
    with pytest.raises(NoduleSAMError, match="different transform than the CT"):
        sc.Logic().refine(params)
    assert theirs.GetTransformNodeID() == shift.GetID()
    assert theirs.GetSegmentation().GetNumberOfSegments() == 1
    theirs.SetAndObserveTransformNodeID(None)                  # same frame as the CT: used as is
    assert sc.ensure_segmentation(params) is theirs and theirs.GetTransformNodeID() is None
    empty = headless.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    scenarios.translate_world(headless.scene, volume_node, [0.0, 5.0, 0.0])
    params.outputSegmentation = empty                          # holds nothing: put in the CT's frame
    assert sc.ensure_segmentation(params).GetTransformNodeID() == volume_node.GetTransformNodeID()


def test_a_job_finishes_on_its_own_parameters(headless, case):
    """Leaving the module during a job unbinds the widget's parameter node; the job's finish
    (and Auto-segment's Refine after it) needs only the job's own parameters. A scene closed
    during the work gets nothing written into it."""
    volume_node = sc.add_volume_node(headless.scene, case.volume)
    params = sc.Parameters.get_or_create(headless.scene)
    params.inputVolume, params.fpr = volume_node, "none"
    logic = sc.Logic(ReferenceDetector(case.reference))
    job = logic.detect_job(params)
    result = job.work(lambda done, total, text="": None)
    del params                                                  # the widget let go of it
    rois = job.finish(result)
    assert len(rois) == 1 and job.params.rois == rois
    assert logic.refine_job(job.params).params is job.params     # the chained Refine plans

    job = logic.detect_job(job.params)
    result = job.work(lambda done, total, text="": None)
    headless.scene.Clear(0)                                     # File > Close scene meanwhile
    with pytest.raises(NoduleSAMError, match="scene was closed"):
        job.finish(result)
    assert headless.scene.GetNodesByClass("vtkMRMLMarkupsROINode").GetNumberOfItems() == 0
    assert headless.scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 0


def test_cancel_midway_writes_nothing(headless, case):
    """Cancel after the detector's first slice and after the first refined nodule."""
    try:
        models.detector_folder(models.DEFAULT_DETECTOR)
    except NoduleSAMError as err:
        pytest.skip(f"bundled detector not available: {err}")
    volume_node = sc.add_volume_node(headless.scene, case.volume)
    scenarios.cancel_midway(headless.scene, volume_node, case)


def test_detection_in_batches_equals_one_call(case):
    """Slicer's Detect runs the 2D detector a batch of slices at a time (so Cancel can stop
    it); the result is that of the command line's single call."""
    from NoduleSAMLib.detect import Detector

    try:
        detector = Detector(models.detector_folder(models.DEFAULT_DETECTOR))
    except NoduleSAMError as err:
        pytest.skip(f"bundled detector not available: {err}")
    detector.predictor.allow_tqdm = False
    whole = detector.predict(case.volume)
    detector.slices_per_batch = 2
    reports = []
    batched = detector.predict(case.volume, progress=lambda done, total: reports.append((done, total)))
    depth = case.volume.hu.shape[0]
    assert reports == [(min(z + 2, depth), depth) for z in range(0, depth, 2)]
    np.testing.assert_allclose(batched.probability, whole.probability, atol=1e-6)
    assert np.array_equal(batched.mask, whole.mask)


def test_auto_segment_for_scripts(headless, case):
    """``NoduleSAMLogic().autoSegment(volumeNode)`` is ``scene.auto_segment``: Detect, then
    Refine, on the volume's scene; returns the segmentation with one segment per nodule."""
    volume_node = sc.add_volume_node(headless.scene, case.volume)
    logic = sc.Logic(ReferenceDetector(case.reference))
    segmentation = sc.auto_segment(volume_node, logic, fpr="none", cropMargin=8)
    params = sc.Parameters.get_or_create(headless.scene)
    assert params.inputVolume is volume_node and params.cropMargin == 8
    assert segmentation is params.outputSegmentation
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    roi, = params.rois
    mask = scenarios._segment_mask(params, roi, case.volume.hu.shape)
    assert scenarios.dice(mask, case.reference) > 0.7
    other = HeadlessScene()
    empty = sc.add_volume_node(other.scene, case.volume, "no nodules")
    with pytest.raises(NoduleSAMError, match="no nodule candidates"):
        sc.auto_segment(empty, sc.Logic(ReferenceDetector(np.zeros_like(case.reference))))


def test_parameters_hold_the_engine_settings_and_their_defaults(headless):
    """Settings have one home: the parameter node's defaults are settings.DEFAULTS, and Detect
    and Refine read every engine setting from it."""
    from NoduleSAMLib.settings import DEFAULTS

    params = sc.Parameters.get_or_create(headless.scene)
    assert sc.settings_from_parameters(params) == DEFAULTS
    params.minInLungs, params.blobs, params.padPx = 0.0, False, 4.0
    params.detectorWeight, params.cropMargin, params.checkpoint = 0.5, 16, ""
    settings = sc.Logic()._config(params)
    assert settings == DEFAULTS.with_candidates(min_in_lungs=0.0, blobs=False, pad_px=4.0) \
        .with_refine(detector_weight=0.5, crop_margin_px=16)
    for name in sc.SETTING_OF_PARAMETER:
        assert name in sc.PARAMETERS_BY_NAME
