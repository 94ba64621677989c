"""Nodule type and solid component on real LIDC VOIs (50 % consensus masks)."""
import json
from pathlib import Path

import numpy as np
import pytest

from NoduleSAMLib.measure import measure_nodule
from NoduleSAMLib.nodule_type import TypeSettings, classify_nodule, solid_fraction, type_from_fraction
from NoduleSAMLib.volume import CTVolume

REPO = Path(__file__).resolve().parents[3]


def read_voi(lidc_dir: Path, case_id: str):
    import SimpleITK as sitk

    folder = lidc_dir / "voi" / case_id
    image = sitk.ReadImage(str(folder / "image.nii.gz"))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "consensus50.nii.gz"))) > 0
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    return CTVolume.from_lps(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(),
                             direction, case_id), mask


def test_solid_nodule(lidc_dir):
    """LIDC-IDRI-0314_N1: 22 mm, texture 5 from all four readers, mean -13 HU."""
    volume, mask = read_voi(lidc_dir, "LIDC-IDRI-0314_N1")
    out = classify_nodule(volume, mask)
    assert out["type"] == "solid"
    assert out["solid_fraction"] > 0.9
    assert out["solid_component_mean_diameter_mm"] is None


def test_ground_glass_nodule(lidc_dir):
    """LIDC-IDRI-0120_N3: 26 mm, texture 1 from all three readers, mean -683 HU."""
    volume, mask = read_voi(lidc_dir, "LIDC-IDRI-0120_N3")
    out = classify_nodule(volume, mask)
    assert out["type"] == "ground-glass"
    assert out["solid_component_mean_diameter_mm"] is None


def test_part_solid_nodule_and_its_solid_component(lidc_dir):
    """LIDC-IDRI-0223_N1: 23 mm, texture 3 from all three readers."""
    volume, mask = read_voi(lidc_dir, "LIDC-IDRI-0223_N1")
    out = classify_nodule(volume, mask)
    whole = measure_nodule(volume, mask)
    assert out["type"] == "part-solid"
    assert 0 < out["solid_component_volume_mm3"] < whole["volume_mm3"]
    assert 0 < out["solid_component_short_axis_mm"] <= out["solid_component_long_axis_mm"]
    assert out["solid_component_long_axis_mm"] <= whole["long_axis_mm"]
    assert out["solid_component_mean_diameter_mm"] == pytest.approx(
        (out["solid_component_long_axis_mm"] + out["solid_component_short_axis_mm"]) / 2)


def test_a_solid_core_of_known_size_in_a_real_ground_glass_nodule(lidc_dir):
    """A 10 mm ball of soft tissue (40 HU) set at the deepest point of the real ground-glass
    nodule LIDC-IDRI-0120_N3 makes it part-solid with a 10 mm solid component: 10 mm between
    the outermost voxel centres, plus one pixel edge to edge (measure.py's convention)."""
    from scipy import ndimage

    volume, mask = read_voi(lidc_dir, "LIDC-IDRI-0120_N3")
    spacing = volume.spacing_zyx_mm
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    centre = np.unravel_index(np.argmax(depth), mask.shape)
    zz, yy, xx = np.indices(mask.shape)
    ball = (((zz - centre[0]) * spacing[0]) ** 2 + ((yy - centre[1]) * spacing[1]) ** 2
            + ((xx - centre[2]) * spacing[2]) ** 2) <= 5.0 ** 2
    assert (ball <= mask).all()  # the core lies inside the nodule
    hu = volume.hu.copy()
    hu[ball] = 40.0
    out = classify_nodule(CTVolume(hu, volume.ijk_to_ras), mask)
    assert out["type"] == "part-solid"
    pixel = spacing[1]
    assert out["solid_component_long_axis_mm"] == pytest.approx(10.0 + pixel, abs=pixel)
    assert out["solid_component_mean_diameter_mm"] == pytest.approx(10.0 + pixel, abs=pixel)
    assert out["solid_component_volume_mm3"] == pytest.approx(4 / 3 * np.pi * 5 ** 3, rel=0.25)


def test_fraction_cut_offs_and_empty_mask():
    settings = TypeSettings()
    assert type_from_fraction(settings.ground_glass_below - 1e-9) == "ground-glass"
    assert type_from_fraction(settings.ground_glass_below) == "part-solid"
    assert type_from_fraction(settings.solid_from - 1e-9) == "part-solid"
    assert type_from_fraction(settings.solid_from) == "solid"
    volume = CTVolume(np.full((3, 8, 8), -800, np.float32), np.eye(4))
    empty = classify_nodule(volume, np.zeros((3, 8, 8), bool))
    assert empty["type"] is None and empty["solid_fraction"] is None


def test_rim_does_not_count_where_an_inner_part_exists():
    """A solid 6 x 6 core with a one-voxel hazy rim is solid; the rim alone would say otherwise."""
    hu = np.full((3, 12, 12), -850, np.float32)
    mask = np.zeros(hu.shape, bool)
    mask[:, 2:10, 2:10] = True
    hu[mask] = -500           # the rim: partial volume with the lung
    hu[:, 3:9, 3:9] = 20      # the core
    assert solid_fraction(hu, mask) == 1.0
    assert (hu[mask] >= -300).mean() < 0.6
    tiny = np.zeros(hu.shape, bool)
    tiny[1, 5:7, 5:7] = True  # 2 x 2 voxels: erosion would empty it, so all of it counts
    assert solid_fraction(hu, tiny) == 1.0


def test_defaults_are_the_benchmarks_tuned_settings():
    """benchmarks/nodule_type.py tunes on train + val; TypeSettings() must be what it chose."""
    result = json.loads((REPO / "benchmarks" / "results" / "nodule_type.json").read_text())
    assert result["settings"] == TypeSettings().to_dict()
    assert result["tuned_on"] == "train + val"


def test_report_has_type_category_exam_and_disclaimer(nodule_crop_0001, lidc_dir):
    """The JSON report of real nodules (the LIDC reference masks as the segmentation): per
    nodule the type, solid component, Lung-RADS and Fleischner; the exam block; the disclaimer."""
    from NoduleSAMLib.boxes import Candidate
    from NoduleSAMLib.outputs import report_dict
    from NoduleSAMLib.pipeline import Nodule, Result

    crop, reference = nodule_crop_0001
    region = np.argwhere(reference)
    z0, y0, x0 = region.min(axis=0) - 1
    z1, y1, x1 = region.max(axis=0) + 2
    box = tuple(int(v) for v in (z0, z1, y0, y1, x0, x1))
    mask = reference[z0:z1, y0:y1, x0:x1]
    full = np.zeros(reference.shape, bool)
    full[z0:z1, y0:y1, x0:x1] = mask
    nodule = Nodule(Candidate("Nodule 1", box), mask, measure_nodule(crop, full), label=1)
    report = report_dict(Result(crop, [nodule]))
    json.dumps(report, default=float)  # serialisable as write_report writes it
    record = report["nodules"][0]
    assert record["type"] == "solid"  # LIDC-IDRI-0001 nodule 1: texture 5, -77 HU
    assert record["solid_component_mean_diameter_mm"] is None
    # 4B: a solid nodule >= 15 mm at baseline; Fleischner: single solid > 8 mm
    assert record["mean_diameter_mm"] >= 15 and record["lung_rads"] == "4B"
    assert "single solid nodule >8 mm" in record["fleischner"]
    assert report["exam"] == {"lung_rads": "4B", "fleischner": record["fleischner"]}
    assert "not a diagnosis" in report["disclaimer"]

    # a part-solid VOI (LIDC-IDRI-0223_N1, texture 3) beside it: two nodules, multiple rules
    volume, ps_mask = read_voi(lidc_dir, "LIDC-IDRI-0223_N1")
    nz, ny, nx = ps_mask.shape
    ps = Nodule(Candidate("Nodule 2", (0, nz, 0, ny, 0, nx)), ps_mask,
                measure_nodule(volume, ps_mask), label=1)
    two = report_dict(Result(volume, [ps, ps]))
    record = two["nodules"][0]
    assert record["type"] == "part-solid" and record["solid_component_mean_diameter_mm"] > 0
    assert record["lung_rads"] in ("3", "4A", "4B")
    assert record["fleischner"].startswith("Fleischner 2017, multiple subsolid nodule")
    assert two["exam"]["lung_rads"] == record["lung_rads"]
    empty = report_dict(Result(volume, []))
    assert empty["exam"]["lung_rads"] == "1" and "no nodule" in empty["exam"]["fleischner"]
