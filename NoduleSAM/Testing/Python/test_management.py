"""Lung-RADS v2022 and Fleischner 2017: every published threshold, on both sides of it.

The expected categories below are written from the published tables (ACR Lung-RADS v2022;
MacMahon et al., Radiology 2017;284:228-243), not read from management.py's tables.
Lung-RADS compares the mean diameter rounded to one decimal (5.95 mm is 6.0 mm) and the volume
rounded to a whole mm3; Fleischner the mean diameter rounded to a whole mm.
"""
import pytest

from NoduleSAMLib.management import (DISCLAIMER, Finding, Prior, exam_fleischner, exam_lung_rads,
                                     fleischner, lung_rads, round_half_up)

# (rule, threshold mm, threshold mm3, category below, category at and above)
SOLID_BASELINE = [(6, 113, "2", "3"), (8, 268, "3", "4A"), (15, 1767, "4A", "4B")]
SOLID_NEW = [(4, 34, "2", "3"), (6, 113, "3", "4A"), (8, 268, "4A", "4B")]
GROUND_GLASS = [(30, 14137, "2", "3")]


def sides(threshold: float, size_by: str):
    """Sizes just below, rounding onto, and at a threshold, with which side they fall on."""
    if size_by == "diameter":
        return [(threshold - 0.06, "below"), (threshold - 0.05, "above"), (threshold, "above")]
    return [(threshold - 0.51, "below"), (threshold - 0.5, "above"), (threshold, "above")]


def solid(size: float, size_by: str) -> Finding:
    if size_by == "diameter":
        return Finding("solid", size)
    return Finding("solid", 1.0, volume_mm3=size)


@pytest.mark.parametrize("size_by", ["diameter", "volume"])
@pytest.mark.parametrize("mm, mm3, below, above", SOLID_BASELINE)
def test_solid_baseline_thresholds(size_by, mm, mm3, below, above):
    for size, side in sides(mm if size_by == "diameter" else mm3, size_by):
        got = lung_rads(solid(size, size_by), size_by=size_by).category
        assert got == (below if side == "below" else above), (size, size_by)


@pytest.mark.parametrize("size_by", ["diameter", "volume"])
@pytest.mark.parametrize("mm, mm3, below, above", SOLID_NEW)
def test_solid_new_thresholds(size_by, mm, mm3, below, above):
    for size, side in sides(mm if size_by == "diameter" else mm3, size_by):
        got = lung_rads(solid(size, size_by), Prior(None), size_by=size_by).category
        assert got == (below if side == "below" else above), (size, size_by)


@pytest.mark.parametrize("size_by", ["diameter", "volume"])
def test_solid_growing_threshold_8mm(size_by):
    """Growing solid nodule: < 8 mm (< 268 mm3) 4A, >= 8 mm 4B."""
    for size, side in sides(8 if size_by == "diameter" else 268, size_by):
        # growth is judged on the mean diameter (+2 mm), the band on the size measure
        finding = (Finding("solid", 7.0, volume_mm3=size) if size_by == "volume"
                   else Finding("solid", size))
        prior = Prior(finding.mean_diameter_mm - 2.0, months_before=12)
        got = lung_rads(finding, prior, size_by=size_by).category
        assert got == ("4A" if side == "below" else "4B"), (size, size_by)


def test_growth_is_more_than_1_5_mm_within_12_months():
    # a 5 mm solid nodule: baseline size category 2; growing (< 8 mm) is 4A
    assert lung_rads(Finding("solid", 5.0), Prior(3.5, 12)).category == "2"   # +1.5: not growth
    assert lung_rads(Finding("solid", 5.0), Prior(3.4, 12)).category == "4A"  # +1.6: growth
    assert lung_rads(Finding("solid", 5.04), Prior(3.46, 12)).category == "2"  # 5.0 - 3.5
    assert lung_rads(Finding("solid", 5.05), Prior(3.46, 12)).category == "4A"  # 5.1 - 3.5
    assert lung_rads(Finding("solid", 5.0), Prior(3.4, 12.0)).reason.startswith("solid, growing")
    # more than 12 months: slow growth, 4B for solid (v2022)
    slow = lung_rads(Finding("solid", 5.0), Prior(3.4, 12.1))
    assert slow.category == "4B" and "slow growth" in slow.reason
    assert lung_rads(Finding("solid", 5.0), Prior(3.5, 24)).category == "2"  # +1.5 over 2 years


def test_stable_nodules_step_down_and_size_crossing_reclassifies():
    # v2022 stepped management: a stable 3 becomes 2, a stable 4A becomes 3; 4B and 2 stay
    assert lung_rads(Finding("solid", 7.0), Prior(7.0, 6)).category == "2"    # prior 3
    assert lung_rads(Finding("solid", 10.0), Prior(10.0, 3)).category == "3"  # prior 4A
    assert lung_rads(Finding("solid", 16.0), Prior(16.0, 3)).category == "4B"
    assert lung_rads(Finding("solid", 4.0), Prior(4.0, 12)).category == "2"
    assert lung_rads(Finding("solid", 10.0), Prior(10.0, 6, lung_rads="3")).category == "2"
    # crossing into a higher band without meeting growth: classed by size
    crossed = lung_rads(Finding("solid", 6.0), Prior(5.9, 12))
    assert crossed.category == "3" and "higher size band" in crossed.reason
    assert lung_rads(Finding("solid", 5.94), Prior(5.9, 12)).category == "2"
    with pytest.raises(ValueError):
        Prior(5.0, lung_rads="5")


def part_solid(total_mm, component_mm, size_by="diameter", total_mm3=None, component_mm3=None):
    return Finding("part-solid", total_mm, total_mm3, component_mm, component_mm3)


@pytest.mark.parametrize("size_by", ["diameter", "volume"])
def test_part_solid_baseline_total_6mm(size_by):
    """< 6 mm total (< 113 mm3) 2; from 6 mm a solid component < 6 mm gives 3."""
    for size, side in sides(6 if size_by == "diameter" else 113, size_by):
        finding = (part_solid(size, 2.0) if size_by == "diameter"
                   else part_solid(1.0, 1.0, total_mm3=size, component_mm3=10))
        assert lung_rads(finding, size_by=size_by).category == ("2" if side == "below" else "3")


@pytest.mark.parametrize("size_by", ["diameter", "volume"])
@pytest.mark.parametrize("mm, mm3, below, above", [(6, 113, "3", "4A"), (8, 268, "4A", "4B")])
def test_part_solid_baseline_solid_component(size_by, mm, mm3, below, above):
    for size, side in sides(mm if size_by == "diameter" else mm3, size_by):
        finding = (part_solid(20.0, size) if size_by == "diameter"
                   else part_solid(1.0, 1.0, total_mm3=5000, component_mm3=size))
        got = lung_rads(finding, size_by=size_by).category
        assert got == (below if side == "below" else above), (size, size_by)


@pytest.mark.parametrize("size_by", ["diameter", "volume"])
def test_part_solid_new(size_by):
    """New: < 6 mm total (< 113 mm3) 3; else a new solid component < 4 mm (< 34 mm3) 4A, >= 4 4B."""
    for size, side in sides(6 if size_by == "diameter" else 113, size_by):
        finding = (part_solid(size, 5.0) if size_by == "diameter"
                   else part_solid(1.0, 1.0, total_mm3=size, component_mm3=60))
        assert lung_rads(finding, Prior(None), size_by=size_by).category == (
            "3" if side == "below" else "4B")
    for size, side in sides(4 if size_by == "diameter" else 34, size_by):
        finding = (part_solid(12.0, size) if size_by == "diameter"
                   else part_solid(1.0, 1.0, total_mm3=900, component_mm3=size))
        assert lung_rads(finding, Prior(None), size_by=size_by).category == (
            "4A" if side == "below" else "4B")
        # a solid component appearing in a ground-glass nodule is new, too
        assert lung_rads(finding, Prior(12.0, 12, solid_component_mean_diameter_mm=None),
                         size_by=size_by).category == ("4A" if side == "below" else "4B")


def test_part_solid_growing_solid_component():
    """Growth of the solid component (> 1.5 mm in 12 months): < 4 mm 4A, >= 4 mm 4B."""
    grow = lambda component: lung_rads(part_solid(12.0, component),
                                       Prior(12.0, 12, solid_component_mean_diameter_mm=component - 1.6))
    assert grow(3.94).category == "4A"
    assert grow(3.95).category == "4B"
    assert grow(4.0).category == "4B"
    # a stable component: stepped down from the baseline category (3 -> 2)
    assert lung_rads(part_solid(12.0, 3.0), Prior(12.0, 6, solid_component_mean_diameter_mm=3.0)
                     ).category == "2"
    # component +1.5 mm only: not growth
    assert lung_rads(part_solid(12.0, 4.5), Prior(12.0, 6, solid_component_mean_diameter_mm=3.0)
                     ).category == "2"


@pytest.mark.parametrize("size_by", ["diameter", "volume"])
@pytest.mark.parametrize("context", ["baseline", "new"])
def test_ground_glass_30mm(size_by, context):
    prior = None if context == "baseline" else Prior(None)
    for size, side in sides(30 if size_by == "diameter" else 14137, size_by):
        finding = (Finding("ground-glass", size) if size_by == "diameter"
                   else Finding("ground-glass", 1.0, volume_mm3=size))
        assert lung_rads(finding, prior, size_by=size_by).category == ("2" if side == "below" else "3")


def test_ground_glass_growth_and_stability():
    assert lung_rads(Finding("ground-glass", 20.0), Prior(15.0, 12)).category == "2"
    assert lung_rads(Finding("ground-glass", 35.0), Prior(30.0, 12)).category == "3"
    assert lung_rads(Finding("ground-glass", 20.0), Prior(15.0, 36)).category == "2"  # slow
    assert lung_rads(Finding("ground-glass", 35.0), Prior(35.0, 12)).category == "2"  # unchanged


def test_4x_only_from_the_readers_input():
    assert lung_rads(Finding("solid", 10.0)).category == "4A"
    flagged = lung_rads(Finding("solid", 10.0), suspicious_features=True)
    assert flagged.category == "4X" and "reader" in flagged.reason
    assert lung_rads(Finding("solid", 7.0), suspicious_features=True).category == "4X"
    assert lung_rads(Finding("solid", 4.0), suspicious_features=True).category == "2"


def test_exam_lung_rads_is_the_most_suspicious_nodule():
    assert exam_lung_rads([]) == "1"
    assert exam_lung_rads(["2", "4A", "3"]) == "4A"
    assert exam_lung_rads(["4B", "4X"]) == "4X"
    assert exam_lung_rads(["3", None]) == "3"
    assert lung_rads(Finding("solid", 10.0)).management.startswith("3-month LDCT")


def test_rounding_is_half_up():
    assert round_half_up(5.95, 1) == 6.0
    assert round_half_up(5.949, 1) == 5.9
    assert round_half_up(2.5, 0) == 3.0
    assert round_half_up(0.15, 1) == 0.2  # 0.15 is 0.1499999... as a float; a reader sees 0.15


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        Finding("calcified", 5.0)
    with pytest.raises(ValueError):
        Finding("part-solid", 8.0)  # no solid component
    with pytest.raises(ValueError):
        lung_rads(Finding("solid", 5.0), size_by="volume")  # no volume
    with pytest.raises(ValueError):
        lung_rads(Finding("solid", 5.0), size_by="area")
    with pytest.raises(ValueError):
        fleischner(Finding("solid", 5.0), risk="medium")


# Fleischner 2017: < 6 mm (< 100 mm3), 6-8 mm (100-250 mm3), > 8 mm (> 250 mm3), on the mean
# diameter rounded to a whole mm: 5.49 -> 5, 5.5 -> 6, 8.49 -> 8, 8.5 -> 9.
@pytest.mark.parametrize("multiple", [False, True])
def test_fleischner_solid_bands_by_diameter(multiple):
    band = lambda mm: fleischner(Finding("solid", mm), multiple=multiple, risk="low")
    assert "<6 mm" in band(5.49) and "no routine follow-up" in band(5.49)
    assert "6-8 mm" in band(5.5)
    assert "6-8 mm" in band(8.49)
    assert ">8 mm" in band(8.5)
    single_or_multiple = "multiple" if multiple else "single"
    assert band(7.0).startswith(f"Fleischner 2017, {single_or_multiple} solid nodule")


def test_fleischner_solid_bands_by_volume():
    band = lambda mm3: fleischner(Finding("solid", 1.0, volume_mm3=mm3), size_by="volume", risk="high")
    assert "<6 mm" in band(99.49) and "optional CT at 12 months" in band(99.49)
    assert "6-8 mm" in band(99.5) and "CT at 6-12 months, then CT at 18-24 months" in band(99.5)
    assert "6-8 mm" in band(250.49)
    assert ">8 mm" in band(250.5) and "PET/CT" in band(250.5)


def test_fleischner_texts_follow_the_table():
    single = lambda mm, risk=None: fleischner(Finding("solid", mm), risk=risk)
    assert single(5, "low").endswith("low risk: no routine follow-up")
    assert single(5, "high").endswith("high risk: optional CT at 12 months")
    assert "low risk: no routine follow-up; high risk: optional CT at 12 months" in single(5)
    assert single(7, "low").endswith("CT at 6-12 months, then consider CT at 18-24 months")
    assert single(9).endswith("consider CT at 3 months, PET/CT, or tissue sampling")
    multi = lambda mm, risk: fleischner(Finding("solid", mm), multiple=True, risk=risk)
    assert multi(7, "low").endswith("CT at 3-6 months, then consider CT at 18-24 months")
    assert multi(9, "high").endswith("CT at 3-6 months, then CT at 18-24 months")
    gg = lambda mm, multiple=False: fleischner(Finding("ground-glass", mm), multiple=multiple)
    assert gg(5.49).endswith("no routine follow-up")
    assert "CT every 2 years until 5 years" in gg(5.5)
    assert "consider CT at 2 and 4 years" in gg(5.49, True)
    assert "most suspicious nodule" in gg(5.5, True)
    ps = lambda mm, component: fleischner(Finding("part-solid", mm, None, component))
    assert ps(5.49, 2).endswith("no routine follow-up")
    assert "annual CT for 5 years" in ps(5.5, 2)
    assert "PET/CT, biopsy or resection" not in ps(12, 8.49)  # component 8 mm
    assert "PET/CT, biopsy or resection" in ps(12, 8.5)       # component 9 mm > 8 mm


def test_fleischner_subsolid_volume_100():
    gg = lambda mm3: fleischner(Finding("ground-glass", 1.0, volume_mm3=mm3), size_by="volume")
    assert gg(99.49).endswith("no routine follow-up")
    assert "every 2 years" in gg(99.5)


def test_exam_fleischner_uses_the_most_suspicious_nodule():
    assert "no nodule" in exam_fleischner([])
    one = exam_fleischner([Finding("solid", 7.0)], risk="low")
    assert "single solid nodule 6-8 mm" in one
    several = exam_fleischner([Finding("solid", 4.0), Finding("solid", 9.0),
                               Finding("ground-glass", 5.0)], risk="high")
    assert "multiple solid nodule >8 mm" in several
    subsolid = exam_fleischner([Finding("solid", 4.0), Finding("part-solid", 10.0, None, 9.5)])
    assert "PET/CT, biopsy or resection" in subsolid


def test_disclaimer_says_decision_support():
    assert "decision support for a radiologist, not a diagnosis" in DISCLAIMER.lower()


def test_report_readout_fields():
    from NoduleSAMLib.management import exam_readout, readout

    solid = {"type": "solid", "mean_diameter_mm": 7.0, "volume_mm3": 180.0,
             "solid_component_mean_diameter_mm": None}
    part = {"type": "part-solid", "mean_diameter_mm": 12.0, "volume_mm3": 900.0,
            "solid_component_mean_diameter_mm": 6.5, "solid_component_volume_mm3": 140.0}
    empty = {"type": None, "mean_diameter_mm": 0.0}
    assert readout(solid) == {"lung_rads": "3", "lung_rads_reason": "solid, baseline, 7 mm mean diameter",
                              "fleischner": fleischner(Finding("solid", 7.0))}
    assert readout(part, multiple=True)["lung_rads"] == "4A"
    assert readout(part)["lung_rads_reason"] == ("part-solid, baseline, 12 mm mean diameter, "
                                                 "solid component 6.5 mm")
    assert lung_rads(Finding("solid", 7.0, 180.4), Prior(None), size_by="volume").reason == (
        "solid, new since the prior, 180 mm3")
    assert readout(part, multiple=True)["fleischner"].startswith("Fleischner 2017, multiple subsolid")
    assert readout(empty) == {"lung_rads": None, "lung_rads_reason": None, "fleischner": None}
    exam = exam_readout([solid, part, empty], risk="low")
    assert exam["lung_rads"] == "4A"
    assert exam["fleischner"].startswith("Fleischner 2017, multiple")
    assert exam_readout([empty]) == {"lung_rads": "1",
                                     "fleischner": "Fleischner 2017: no nodule found; no nodule follow-up"}


def test_the_report_takes_the_patients_risk_for_fleischner():
    """``nodulesam segment --risk``: a 7 mm solid nodule's Fleischner advice depends on it."""
    import numpy as np

    from NoduleSAMLib.boxes import Candidate
    from NoduleSAMLib.measure import measure_nodule
    from NoduleSAMLib.outputs import report_dict
    from NoduleSAMLib.pipeline import Nodule, Result
    from NoduleSAMLib.volume import CTVolume

    zz, yy, xx = np.mgrid[:20, :40, :40]
    ball = (zz - 10) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 3.5 ** 2  # 7 mm at 1 mm voxels
    volume = CTVolume.from_lps(np.where(ball, 40.0, -850.0).astype(np.float32), (1, 1, 1), (0, 0, 0))
    nodule = Nodule(Candidate("Nodule 1", (0, 20, 0, 40, 0, 40)), ball, measure_nodule(volume, ball))
    texts = {risk: report_dict(Result(volume, [nodule]), risk=risk)["nodules"][0]["fleischner"]
             for risk in (None, "low", "high")}
    assert len(set(texts.values())) == 3, texts
    exam = report_dict(Result(volume, [nodule]), risk="high")["exam"]["fleischner"]
    assert exam != report_dict(Result(volume, [nodule]), risk="low")["exam"]["fleischner"]
