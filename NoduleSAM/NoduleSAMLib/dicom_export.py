"""DICOM outputs for PACS: the nodules as a DICOM SEG and their measurements as a DICOM SR
(TID 1500 measurement report), both referencing the source CT series, written with highdicom.

Only a CT read from a DICOM series can be referenced: its slice headers are read again from the
series folder and matched to the volume's slices by position, so every SEG frame points at the
CT image it was segmented on.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import __version__
from .errors import NoduleSAMError
from .pipeline import Result, nodule_record
from .volume import dicom_series_headers

MANUFACTURER = "NoduleSAM"
PRIVATE_SCHEME = "99NODULESAM"  # a private coding scheme for what SNOMED CT has no code for
# slices match the volume when their positions agree to this (mm)
POSITION_TOLERANCE_MM = 0.05


def source_slices(result: Result) -> list:
    """The headers of the CT's DICOM slices (pydicom datasets, no pixel data), in the volume's
    slice order. Refuses a volume that was not read from a DICOM series folder."""
    volume = result.volume
    folder = Path(volume.source)
    if not folder.is_dir():
        raise NoduleSAMError(f"{volume.source or 'the CT'}: DICOM SEG and SR need a CT read from a "
                             "DICOM series folder (they reference its images); this one is a file")
    n_slices = volume.hu.shape[0]
    expected = volume.zyx_to_lps(np.column_stack([np.arange(n_slices), np.zeros(n_slices),
                                                  np.zeros(n_slices)]))
    for slices in dicom_series_headers(folder).values():
        headers = [header for _, header in slices if "ImagePositionPatient" in header]
        if len(headers) != n_slices:
            continue
        positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
        order = [int(np.argmin(np.linalg.norm(positions - point, axis=1))) for point in expected]
        if (len(set(order)) == n_slices and np.allclose(positions[order], expected,
                                                        atol=POSITION_TOLERANCE_MM)):
            return [headers[i] for i in order]
    raise NoduleSAMError(f"{folder}: no DICOM series there matches the CT's slices (was it "
                         "reoriented or resampled?); DICOM SEG and SR need the original series")


def _algorithm():
    from highdicom import AlgorithmIdentificationSequence
    from pydicom.sr.codedict import codes

    return AlgorithmIdentificationSequence(name="NoduleSAM", version=__version__,
                                           family=codes.cid7162.ArtificialIntelligence)


def write_dicom_seg(result: Result, path: str | Path, slices: list | None = None) -> Path:
    """A DICOM SEG (binary) with one segment per nodule (SNOMED CT "Nodule" in "Lung"),
    referencing the CT series; frames without a nodule are left out."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    slices = slices if slices is not None else source_slices(result)
    if not result.nodules:
        raise NoduleSAMError("no nodules to write as DICOM SEG (a SEG needs at least one segment)")
    given = {"given box", "click"}
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=nodule.candidate.name[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=(hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
                            if nodule.candidate.source in given
                            else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC),
            algorithm_identification=_algorithm(),
            anatomic_regions=[codes.SCT.Lung],
            tracking_uid=hd.UID(), tracking_id=nodule.candidate.name[:64])
        for number, nodule in enumerate(result.nodules, start=1)]
    # segment numbers 1..n in list order, whatever the label map's labels are
    labels = result.labelmap()
    numbered = np.zeros(labels.shape, np.uint16)
    for number, nodule in enumerate(result.nodules, start=1):
        numbered[labels == nodule.label] = number
    seg = hd.seg.Segmentation(
        source_images=slices, pixel_array=numbered,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9801,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name="NoduleSAM", software_versions=__version__,
        device_serial_number="none", series_description="NoduleSAM nodules",
        content_description="Lung nodules (decision support, review required)",
        content_label="NODULES")
    return _save(seg, path)


def _private(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def write_dicom_sr(result: Result, path: str | Path, seg_path: str | Path,
                   slices: list | None = None) -> Path:
    """A Comprehensive 3D SR holding a TID 1500 measurement report: per nodule its volume, long
    and short axis, mean diameter and mean HU, and its type and Lung-RADS category where the
    report has them, each group referencing its segment in the DICOM SEG at ``seg_path``."""
    import highdicom as hd
    import pydicom
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    slices = slices if slices is not None else source_slices(result)
    seg = pydicom.dcmread(seg_path)
    units = {"mm3": codes.UCUM.CubicMillimeter, "mm": codes.UCUM.Millimeter,
             "hu": codes.UCUM.HounsfieldUnit}
    groups = []
    for number, nodule in enumerate(result.nodules, start=1):
        record = nodule_record(result.volume, nodule)
        measurements = [
            hd.sr.Measurement(name=codes.SCT.Volume, value=record["volume_mm3"],
                              unit=units["mm3"]),
            hd.sr.Measurement(name=codes.SCT.LongAxis, value=record["long_axis_mm"],
                              unit=units["mm"]),
            hd.sr.Measurement(name=codes.SCT.ShortAxis, value=record["short_axis_mm"],
                              unit=units["mm"]),
            hd.sr.Measurement(name=codes.SCT.Diameter, value=record["mean_diameter_mm"],
                              unit=units["mm"], derivation=codes.SCT.Mean)]
        if record.get("mean_hu") is not None:
            measurements.append(hd.sr.Measurement(
                name=codes.DCM.AttenuationCoefficient, value=record["mean_hu"], unit=units["hu"],
                derivation=codes.SCT.Mean))
        evaluations = []
        if record.get("type"):
            evaluations.append(hd.sr.QualitativeEvaluation(
                name=_private("NODTYPE", "Nodule type"),
                value=_private(record["type"].upper(), record["type"])))
        if record.get("lung_rads"):
            evaluations.append(hd.sr.QualitativeEvaluation(
                name=_private("LUNGRADS", "Lung-RADS v2022 category"),
                value=_private(f"LR{record['lung_rads']}", f"Lung-RADS {record['lung_rads']}")))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(),
                                                         identifier=nodule.candidate.name[:64]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(slices[0].SeriesInstanceUID)),
            finding_type=codes.SCT.Nodule, algorithm_id=hd.sr.AlgorithmIdentification(
                name="NoduleSAM", version=__version__),
            finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
            measurements=measurements, qualitative_evaluations=evaluations or None))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="NoduleSAM", manufacturer_name=MANUFACTURER,
            model_name=f"NoduleSAM {__version__}"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CodedConcept(value="24627-2", scheme_designator="LN", meaning="CT Chest"),
        imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*slices, seg], content=report[0], series_instance_uid=hd.UID(),
        series_number=9802, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description="NoduleSAM nodule measurements (not verified)")
    return _save(sr, path)


def _save(dataset, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    dataset.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)
    return path
