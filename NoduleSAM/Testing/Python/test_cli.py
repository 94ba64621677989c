"""The ``nodulesam`` command end to end on a real CT crop; its output loads in Slicer's MRML."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleSAMLib.cli import main
from NoduleSAMLib.prompts import read_boxes_json


@pytest.fixture(scope="module")
def crop_nrrd(nodule_crop_0001, tmp_path_factory):
    volume, truth = nodule_crop_0001
    image = sitk.GetImageFromArray(volume.hu.astype(np.int16))
    image.SetSpacing(volume.spacing_ijk_mm.tolist())
    image.SetOrigin(volume.origin_lps_mm.tolist())
    image.SetDirection(volume.direction_lps.ravel().tolist())
    path = tmp_path_factory.mktemp("ct") / "crop.nrrd"
    sitk.WriteImage(image, str(path))
    return path, volume, truth


def load_in_slicer(seg_path, ct_path):
    """Load the .seg.nrrd through slicer-core's segmentation logic; labelmap on the CT grid."""
    import slicer
    from conftest_slicer import HeadlessScene

    headless = HeadlessScene()
    segmentation = headless.logics["Segmentations"].LoadSegmentationFromFile(str(seg_path), False)
    assert segmentation is not None
    ct = headless.logics["Volumes"].AddArchetypeVolume(str(ct_path), "CT")
    labelmap = headless.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    segment_ids = [segmentation.GetSegmentation().GetNthSegmentID(i)
                   for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    names = [segmentation.GetSegmentation().GetSegment(s).GetName() for s in segment_ids]
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
        segmentation, labelmap, 0)  # 0: extent of the reference geometry
    import vtk

    ids = vtk.vtkStringArray()
    for segment_id in segment_ids:
        ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentation, ids, labelmap, ct)
    return names, slicer.util.arrayFromVolume(labelmap).copy()


def test_segment_given_boxes_writes_seg_nrrd_that_slicer_loads(crop_nrrd, tmp_path, capsys):
    ct_path, volume, truth = crop_nrrd
    z = int(np.argmax(truth.sum(axis=(1, 2))))
    ys, xs = np.nonzero(truth[z])
    boxes = {"boxes": [{"name": "Left nodule",
                        "ijk": [z - 1, z + 2, int(ys.min()) - 3, int(ys.max()) + 4,
                                int(xs.min()) - 3, int(xs.max()) + 4]},
                       {"name": "Outside", "ijk": [40, 50, 0, 10, 0, 10]}]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out, report = tmp_path / "out.seg.nrrd", tmp_path / "report.json"
    code = main(["segment", str(ct_path), "-o", str(out), "--report", str(report),
                 "--boxes", str(tmp_path / "boxes.json"), "--overview", str(tmp_path / "o.png")])
    assert code == 0
    captured = capsys.readouterr()
    assert "box 'Outside'" in captured.err and "skipped" in captured.err
    data = json.loads(report.read_text())
    assert [n["name"] for n in data["nodules"]] == ["Left nodule"]
    nodule = data["nodules"][0]
    assert nodule["ijk"] == boxes["boxes"][0]["ijk"]
    assert nodule["volume_mm3"] > 100 and nodule["long_axis_mm"] > 10
    assert nodule["short_axis_mm"] <= nodule["long_axis_mm"]
    assert nodule["mean_diameter_mm"] == (nodule["long_axis_mm"] + nodule["short_axis_mm"]) / 2
    assert -400 < nodule["mean_hu"] < 100
    assert set(data["timings_s"]) >= {"read_s", "refine_s", "measure_s", "total_s"}
    assert len(nodule["box_ras_mm"]) == 2 and len(nodule["box_lps_mm"][0]) == 3
    # a report can be edited and fed back as --boxes
    assert read_boxes_json(report)[0]["ijk"] == nodule["ijk"]

    names, labels = load_in_slicer(out, ct_path)
    assert names == ["Left nodule"]
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    np.testing.assert_array_equal(labels > 0, written > 0)
    painted = labels > 0
    assert 2 * (painted & truth).sum() / (painted.sum() + truth[z - 1:z + 2].sum()) > 0.7
    assert (tmp_path / "o.png").stat().st_size > 1000


def test_user_errors_exit_non_zero_with_one_line(crop_nrrd, tmp_path, capsys):
    ct_path, _, _ = crop_nrrd
    assert main(["segment", str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "x.seg.nrrd")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"boxes": [{"name": "A", "ijk": [1, 2]}]}')
    assert main(["segment", str(ct_path), "-o", str(tmp_path / "x.seg.nrrd"),
                 "--boxes", str(tmp_path / "bad.json"), "--no-refine"]) == 2
    assert "'ijk' must be 6 finite numbers" in capsys.readouterr().err
    # outputs are checked before the CT is even opened: a missing CT is not what is reported
    for output, message in ((tmp_path / "x.nrrd", "must end in .seg.nrrd"),
                            (tmp_path, "is a folder"),
                            (tmp_path / "bad.json" / "x.seg.nrrd", "cannot write the segmentation"),
                            (Path("/proc/x.seg.nrrd"), "cannot write the segmentation")):
        assert main(["segment", str(tmp_path / "missing.nrrd"), "-o", str(output)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["segment", str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "a.seg.nrrd"),
                 "--report", str(tmp_path / "a.seg.nrrd")]) == 2
    assert "must end in .json" in capsys.readouterr().err
    before = (tmp_path / "bad.json").read_bytes()  # a report must not overwrite the boxes file
    assert main(["segment", str(ct_path), "-o", str(tmp_path / "a.seg.nrrd"), "--boxes",
                 str(tmp_path / "bad.json"), "--report", str(tmp_path / "bad.json")]) == 2
    assert "is also an input or another output" in capsys.readouterr().err
    assert (tmp_path / "bad.json").read_bytes() == before
    assert main(["segment", str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "a.seg.nrrd"),
                 "--overview", str(tmp_path / "o.jpg")]) == 2
    assert "must end in .png" in capsys.readouterr().err
    for folds in ("0,x", "", "1,-1"):
        assert main(["segment", str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "a.seg.nrrd"),
                     "--folds", folds]) == 2
        assert "is not a fold number" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "a.seg.nrrd"),
                 "--min-volume", "nan"]) == 2
    assert "must be a number >= 0" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.seg.nrrd")) and not list(tmp_path.glob(".nodulesam-probe-*"))
    # every box rejected (outside the volume, inverted) or none given: nothing was done, exit 2
    outside = {"boxes": [{"name": "Far", "ijk": [500, 510, 0, 5, 0, 5]},
                         {"name": "Inverted", "ijk": [5, 2, 10, 20, 10, 20]}]}
    (tmp_path / "rejected.json").write_text(json.dumps(outside))
    capsys.readouterr()
    assert main(["segment", str(ct_path), "-o", str(tmp_path / "r.seg.nrrd"), "--boxes",
                 str(tmp_path / "rejected.json"), "--no-refine"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to refine" in err and "'Far'" in err and "'Inverted'" in err
    (tmp_path / "empty.json").write_text('{"boxes": []}')
    assert main(["segment", str(ct_path), "-o", str(tmp_path / "r.seg.nrrd"), "--boxes",
                 str(tmp_path / "empty.json"), "--no-refine"]) == 2
    assert "the boxes and points lists are empty" in capsys.readouterr().err
    assert not (tmp_path / "r.seg.nrrd").exists()
    # as a real process: one line on stderr, no traceback
    run = subprocess.run([sys.executable, "-m", "NoduleSAMLib.cli", "segment",
                          str(tmp_path / "nothing"), "-o", str(tmp_path / "y.seg.nrrd")],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().count("\n") == 0 and "nodulesam: error:" in run.stderr


def test_models_list_and_verify(capsys, tmp_path, monkeypatch):
    from NoduleSAMLib.models import REFINERS

    assert main(["models", "list"]) == 0
    assert "litemedsam" in capsys.readouterr().out
    monkeypatch.setenv("NODULESAM_CACHE", str(tmp_path))  # no downloaded checkpoints
    assert main(["models", "verify"]) == 0
    out = capsys.readouterr().out
    for name in ("litemedsam", "nodule-detector", "nodule-fpr", "nodule-voi"):
        assert f"ok   {name}:" in out
    assert "FAIL" not in out
    # a downloaded checkpoint that was altered fails verification, with exit status 2
    spec = next(s for s in REFINERS.values() if s.arch != "litemedsam" and s.sha256)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / spec.filename).write_bytes(b"not the published weights")
    assert main(["models", "verify"]) == 2
    captured = capsys.readouterr()
    assert f"FAIL {spec.name}:" in captured.out and "failed verification" in captured.err
