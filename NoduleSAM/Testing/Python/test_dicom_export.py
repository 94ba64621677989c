"""DICOM SEG and SR of real nodules on a real DICOM series, read back with highdicom and pydicom."""
import re
import shutil

import numpy as np
import pydicom
import pytest

from NoduleSAMLib.errors import NoduleSAMError


@pytest.fixture(scope="module")
def dicom_crop(series_0001, tmp_path_factory, reference_0001):
    """24 slices of LIDC-IDRI-0001's DICOM series around nodule 1 (a real series, fewer slices),
    and the consensus box of the nodule in that sub-series."""
    from NoduleSAMLib.volume import read_ct

    headers = [(f, pydicom.dcmread(f, stop_before_pixels=True)) for f in sorted(series_0001.glob("*.dcm"))]
    headers.sort(key=lambda fh: float(fh[1].ImagePositionPatient[2]))
    folder = tmp_path_factory.mktemp("dicom_crop") / "series"
    folder.mkdir()
    z0, z1 = 78, 102
    for file, _ in headers[z0:z1]:
        shutil.copy(file, folder / file.name)
    volume = read_ct(folder)
    truth = reference_0001[z0:z1] > 0
    zs, ys, xs = np.nonzero(truth)
    box = [int(zs.min()), int(zs.max()) + 1, int(ys.min()) - 2, int(ys.max()) + 3,
           int(xs.min()) - 2, int(xs.max()) + 3]
    return folder, volume, truth, box


@pytest.fixture(scope="module")
def result(dicom_crop, sam):
    from NoduleSAMLib.pipeline import Pipeline
    from NoduleSAMLib.refine import BoxRefiner

    _, volume, _, box = dicom_crop
    return Pipeline(None, BoxRefiner(sam)).run(volume, [{"name": "Nodule 1", "ijk": box}])


def test_dicom_seg_round_trip_matches_the_ct(dicom_crop, result, tmp_path):
    import highdicom as hd

    from NoduleSAMLib.dicom_export import source_slices, write_dicom_seg

    folder, volume, truth, _ = dicom_crop
    assert len(result.nodules) == 1
    slices = source_slices(result)
    path = write_dicom_seg(result, tmp_path / "nodules.dcm", slices)
    seg = hd.seg.segread(path)
    assert seg.Modality == "SEG" and seg.number_of_segments == 1
    description = seg.get_segment_description(1)
    assert description.segment_label == "Nodule 1"
    assert description.segmented_property_type.value == "27925004"  # SNOMED CT Nodule
    assert [r.value for r in description.anatomic_regions] == ["39607008"]  # Lung
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == slices[0].SeriesInstanceUID
    # the frames lie on the CT's images: the mask read back per source image is the label map
    uids = [s.SOPInstanceUID for s in slices]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    np.testing.assert_array_equal(pixels > 0, result.labelmap() > 0)
    assert 2 * ((pixels > 0) & truth).sum() / ((pixels > 0).sum() + truth.sum()) > 0.7
    # and pydicom reads it as a plain dataset whose frame positions are the CT's
    plain = pydicom.dcmread(path)
    for frame in plain.PerFrameFunctionalGroupsSequence:
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose(position, [float(v) for v in slices[uids.index(source)].ImagePositionPatient])


def result_series_uid(result):
    from NoduleSAMLib.dicom_export import source_slices

    return source_slices(result)[0].SeriesInstanceUID


def test_dicom_sr_references_the_seg_and_holds_the_measurements(result, tmp_path):
    import highdicom as hd

    from NoduleSAMLib.dicom_export import write_dicom_seg, write_dicom_sr
    from NoduleSAMLib.pipeline import nodule_record

    seg_path = write_dicom_seg(result, tmp_path / "seg.dcm")
    sr_path = write_dicom_sr(result, tmp_path / "sr.dcm", seg_path)
    sr = hd.sr.srread(sr_path)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 1
    group = groups[0]
    seg = pydicom.dcmread(seg_path)
    assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert list(group.referenced_segment.referenced_segment_numbers) == [1]
    assert group.referenced_segment.source_series_for_segmentation.value \
        == result_series_uid(result)
    record = nodule_record(result.volume, result.nodules[0])
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    assert values["Volume"] == pytest.approx(record["volume_mm3"], rel=1e-6)
    assert values["Long axis"] == pytest.approx(record["long_axis_mm"], rel=1e-6)
    assert values["Short axis"] == pytest.approx(record["short_axis_mm"], rel=1e-6)
    assert values["Diameter"] == pytest.approx(record["mean_diameter_mm"], rel=1e-6)
    assert values["Attenuation Coefficient"] == pytest.approx(record["mean_hu"], rel=1e-6)
    assert sr.VerificationFlag == "UNVERIFIED"


def test_dicom_outputs_refuse_a_ct_that_is_not_a_dicom_series(nodule_crop_0001):
    from NoduleSAMLib.dicom_export import source_slices
    from NoduleSAMLib.pipeline import Result

    crop, _ = nodule_crop_0001
    with pytest.raises(NoduleSAMError, match="need a CT read from a DICOM series folder"):
        source_slices(Result(crop, []))


def test_segment_command_writes_dicom_seg_sr_and_an_html_row_per_nodule(dicom_crop, tmp_path, capsys):
    import base64
    import json
    from html.parser import HTMLParser

    import highdicom as hd

    from NoduleSAMLib.cli import main

    folder, volume, _, box = dicom_crop
    second = [box[0], box[1], box[2] - 60, box[3] - 60, box[4] - 60, box[5] - 60]
    (tmp_path / "boxes.json").write_text(json.dumps({"boxes": [
        {"name": "Nodule 1", "ijk": box}, {"name": "Second box", "ijk": second}]}))
    report = tmp_path / "out" / "report.json"
    code = main(["segment", str(folder), "-o", str(tmp_path / "out" / "n.seg.nrrd"),
                 "--boxes", str(tmp_path / "boxes.json"), "--report", str(report),
                 "--dicom-seg", str(tmp_path / "out" / "seg.dcm"),
                 "--dicom-sr", str(tmp_path / "out" / "sr.dcm"),
                 "--pdf", str(tmp_path / "out" / "report.pdf")])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    seg = hd.seg.segread(tmp_path / "out" / "seg.dcm")
    assert seg.number_of_segments == len(data["nodules"])
    sr = hd.sr.srread(tmp_path / "out" / "sr.dcm")
    assert len(sr.content.get_volumetric_roi_measurement_groups()) == len(data["nodules"])

    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.images, self.text = [], [], ""

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "tr" and attrs.get("class") == "nodule":
                self.rows.append(attrs["id"])
            if tag == "img":
                self.images.append(attrs["src"])

        def handle_data(self, data):
            self.text += data

    page = Rows()
    page.feed((tmp_path / "out" / "report.html").read_text())  # beside the JSON by default
    assert page.rows == [f"nodule-{i}" for i in range(1, len(data["nodules"]) + 1)]
    for nodule in data["nodules"]:
        assert nodule["name"] in page.text
    assert all(base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for src in page.images)
    assert "not a diagnosis" in page.text
    # the PDF: a summary page, then a page per nodule
    pdf = (tmp_path / "out" / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page[^s]", pdf)) == 1 + len(data["nodules"])

    # DICOM outputs need DICOM input, refused before any work
    nrrd = tmp_path / "ct.nrrd"
    nrrd.write_bytes(b"")
    assert main(["segment", str(nrrd), "-o", str(tmp_path / "x.seg.nrrd"),
                 "--dicom-seg", str(tmp_path / "x.dcm")]) == 2
    assert "need a DICOM series folder" in capsys.readouterr().err
    assert main(["segment", str(folder), "-o", str(tmp_path / "x.seg.nrrd"),
                 "--dicom-sr", str(tmp_path / "x.dcm")]) == 2
    assert "--dicom-sr needs --dicom-seg" in capsys.readouterr().err
