"""Lung-RADS v2022 categories and Fleischner 2017 recommendations, from rule tables.

Decision support for a radiologist, not a diagnosis: every category and recommendation here is
what the published tables give for the measured type and size, which the radiologist checks
against the images, the patient and the features this module cannot see (calcification, fat,
perifissural shape, spiculation, lymph nodes, infection).

Sources
-------
- ACR Lung-RADS v2022 assessment categories (American College of Radiology, November 2022);
  Christensen J et al., "ACR Lung-RADS v2022: Assessment Categories and Management
  Recommendations", CHEST 2024;165(3):738-753. The size bands are those of v1.1 (2019), which
  v2022 keeps; v2022 adds the 12-month interval to the growth definition, the slow-growth rule
  and stepped management of stable category 3 and 4A nodules.
- MacMahon H et al., "Guidelines for Management of Incidental Pulmonary Nodules Detected on CT
  Images: From the Fleischner Society 2017", Radiology 2017;284:228-243; measurement:
  Bankier AA et al., Radiology 2017;285:584-600.

Lung-RADS, as implemented (``lung_rads``)
-----------------------------------------
- Size is the mean of long and short axis, rounded to one decimal (v2022), or, with
  ``size_by="volume"``, the volume rounded to a whole mm3, against the table's volume
  equivalents (113, 268, 1767 mm3 for 6, 8, 15 mm; 34 mm3 for 4 mm; 14137 mm3 for 30 mm).
  Bands are half-open: "6 to < 8 mm" holds 6.0 and not 8.0.
- Baseline (no prior): solid < 6 mm: 2; 6 to < 8: 3; 8 to < 15: 4A; >= 15: 4B. Part-solid
  < 6 mm total: 2; >= 6 mm total with a solid component < 6 mm: 3, 6 to < 8: 4A, >= 8: 4B.
  Ground-glass < 30 mm: 2; >= 30 mm: 3.
- New (absent on the prior): solid < 4 mm: 2; 4 to < 6: 3; 6 to < 8: 4A; >= 8: 4B. Part-solid
  < 6 mm total: 3; otherwise a new solid component < 4 mm: 4A, >= 4 mm: 4B. Ground-glass as
  at baseline (>= 30 mm new: 3).
- Growing (mean diameter up by > 1.5 mm within 12 months; for part-solid nodules, of the solid
  component, and a solid component appearing in a ground-glass nodule is new): solid < 8 mm:
  4A, >= 8 mm: 4B; part-solid solid component < 4 mm: 4A, >= 4 mm: 4B. A ground-glass nodule
  stays 2 below 30 mm; >= 30 mm and growing: 3 (v2022 gives 2 only "unchanged or slowly
  growing").
- Slow growth (up by > 1.5 mm over a prior more than 12 months old): solid and part-solid
  nodules 4B (v2022: nodules growing over several screens without meeting the 12-month growth
  definition); ground-glass 2 below 30 mm, 3 from 30 mm.
- Not growing: a nodule whose size now falls in a higher band than the prior's is classed by
  size (v2022: crossing a size threshold reclassifies); otherwise stepped management: the
  prior's category, 3 -> 2, 4A -> 3 (2 and 4B stay). The prior's category is ``Prior.lung_rads``
  where given, else the baseline category of the prior's size, which can only overstate it.
- 4X (category 3 or 4 with additional features that raise the suspicion of cancer) needs a
  reader's judgement: only the caller's ``suspicious_features=True`` gives it; the engine never
  sets it. Category 1 (no nodule, or benign calcification or fat) is given only to an exam
  without nodules: calcification is not assessed. Category 0 and the S modifier are not given.
- The exam's category is that of its most suspicious nodule (``exam_lung_rads``).

Fleischner 2017, as implemented (``fleischner``)
------------------------------------------------
For incidental nodules in adults aged 35 or over without known cancer or immunosuppression,
not for lung cancer screening. Size is the mean diameter rounded to the nearest whole mm
(Bankier 2017), or the volume: < 6 mm (< 100 mm3), 6-8 mm (100-250 mm3), > 8 mm (> 250 mm3);
subsolid nodules: < 6 mm or >= 6 mm (>= 100 mm3). Risk ("low" or "high") is the patient's, an
input; without it the solid-nodule text gives both. Multiple nodules: the most suspicious
nodule's recommendation guides the exam (``exam_fleischner``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

DISCLAIMER = ("Decision support for a radiologist, not a diagnosis: nodule type, Lung-RADS v2022 "
              "category and Fleischner 2017 recommendation are computed from the automatic "
              "segmentation and must be checked by a radiologist against the images and the "
              "patient.")

TYPES = ("solid", "part-solid", "ground-glass")
CATEGORY_ORDER = ("1", "2", "3", "4A", "4B", "4X")
GROWTH_MM = 1.5          # Lung-RADS v2022: growth is a mean-diameter increase of > 1.5 mm ...
GROWTH_WINDOW_MONTHS = 12  # ... within a 12-month interval
INF = math.inf

# Lung-RADS v2022 size tables: ((upper bound in mm, upper bound in mm3, category), ...), each
# band below its upper bound and at or above the previous one.
LUNG_RADS = {
    # solid, baseline: < 6 mm (< 113 mm3) 2; 6 to < 8 (113 to < 268) 3; 8 to < 15 (268 to
    # < 1767) 4A; >= 15 (>= 1767) 4B
    ("solid", "baseline"): ((6, 113, "2"), (8, 268, "3"), (15, 1767, "4A"), (INF, INF, "4B")),
    # solid, new: < 4 mm (< 34 mm3) 2; 4 to < 6 (34 to < 113) 3; 6 to < 8 (113 to < 268) 4A;
    # >= 8 (>= 268) 4B
    ("solid", "new"): ((4, 34, "2"), (6, 113, "3"), (8, 268, "4A"), (INF, INF, "4B")),
    # solid, growing: < 8 mm (< 268 mm3) 4A; >= 8 (>= 268) 4B
    ("solid", "growing"): ((8, 268, "4A"), (INF, INF, "4B")),
    # part-solid, total size at baseline: < 6 mm (< 113 mm3) 2; from 6 mm the solid component
    # decides (None: look it up in the next table)
    ("part-solid", "baseline"): ((6, 113, "2"), (INF, INF, None)),
    # part-solid, solid component at baseline (total >= 6 mm): < 6 mm (< 113 mm3) 3; 6 to < 8
    # (113 to < 268) 4A; >= 8 (>= 268) 4B
    ("part-solid component", "baseline"): ((6, 113, "3"), (8, 268, "4A"), (INF, INF, "4B")),
    # part-solid, new: < 6 mm total (< 113 mm3) 3; else the new solid component decides
    ("part-solid", "new"): ((6, 113, "3"), (INF, INF, None)),
    # part-solid, a new or growing solid component: < 4 mm (< 34 mm3) 4A; >= 4 (>= 34) 4B
    ("part-solid component", "new"): ((4, 34, "4A"), (INF, INF, "4B")),
    ("part-solid component", "growing"): ((4, 34, "4A"), (INF, INF, "4B")),
    # ground-glass (non-solid): < 30 mm (< 14137 mm3) 2; >= 30 mm (>= 14137) 3 at baseline or
    # new; growing or slowly growing ones stay 2 below 30 mm (see the module docstring from 30)
    ("ground-glass", "baseline"): ((30, 14137, "2"), (INF, INF, "3")),
    ("ground-glass", "new"): ((30, 14137, "2"), (INF, INF, "3")),
    ("ground-glass", "growing"): ((30, 14137, "2"), (INF, INF, "3")),
}
# v2022 stepped management of a nodule stable on follow-up: 3 -> 2 (6-month LDCT), 4A -> 3
# (3-month LDCT); 2 and 4B keep their category.
STEP_DOWN = {"3": "2", "4A": "3"}
LUNG_RADS_MANAGEMENT = {
    "1": "continue annual screening with LDCT in 12 months",
    "2": "continue annual screening with LDCT in 12 months",
    "3": "6-month LDCT",
    "4A": "3-month LDCT; PET/CT may be used when there is a solid component of 8 mm or more",
    "4B": "referral for further clinical evaluation: diagnostic chest CT, PET/CT and/or tissue "
          "sampling depending on the probability of malignancy and comorbidities",
    "4X": "as 4B: referral for further clinical evaluation",
}

# Fleischner 2017 bands: (upper bound in whole mm, upper bound in mm3, band), inclusive upper
# bounds as the table reads: < 6 mm (< 100 mm3), 6-8 mm (100-250 mm3), > 8 mm (> 250 mm3).
FLEISCHNER_SOLID_BANDS = ((5, 99, "<6"), (8, 250, "6-8"), (INF, INF, ">8"))
FLEISCHNER_SUBSOLID_BANDS = ((5, 99, "<6"), (INF, INF, ">=6"))  # < 6 mm; >= 6 mm (>= 100 mm3)
# (type, multiple, band) -> {risk: text}; risk None: the same for both.
FLEISCHNER = {
    ("solid", False, "<6"): {"low": "no routine follow-up",
                             "high": "optional CT at 12 months"},
    ("solid", False, "6-8"): {"low": "CT at 6-12 months, then consider CT at 18-24 months",
                              "high": "CT at 6-12 months, then CT at 18-24 months"},
    ("solid", False, ">8"): {None: "consider CT at 3 months, PET/CT, or tissue sampling"},
    ("solid", True, "<6"): {"low": "no routine follow-up",
                            "high": "optional CT at 12 months"},
    ("solid", True, "6-8"): {"low": "CT at 3-6 months, then consider CT at 18-24 months",
                             "high": "CT at 3-6 months, then CT at 18-24 months"},
    ("solid", True, ">8"): {"low": "CT at 3-6 months, then consider CT at 18-24 months",
                            "high": "CT at 3-6 months, then CT at 18-24 months"},
    ("ground-glass", False, "<6"): {None: "no routine follow-up"},
    ("ground-glass", False, ">=6"): {None: "CT at 6-12 months to confirm persistence, then CT "
                                           "every 2 years until 5 years"},
    ("part-solid", False, "<6"): {None: "no routine follow-up"},
    ("part-solid", False, ">=6"): {None: "CT at 3-6 months to confirm persistence; if unchanged "
                                         "and the solid component remains < 6 mm, annual CT for "
                                         "5 years"},
    ("subsolid", True, "<6"): {None: "CT at 3-6 months; if stable, consider CT at 2 and 4 "
                                     "years"},
    ("subsolid", True, ">=6"): {None: "CT at 3-6 months; subsequent management based on the "
                                      "most suspicious nodule(s)"},
}
# How pressing each recommendation is, to pick the most suspicious nodule of an exam.
FLEISCHNER_URGENCY = {("solid", False, "<6"): 0, ("ground-glass", False, "<6"): 0,
                      ("part-solid", False, "<6"): 0, ("solid", True, "<6"): 0,
                      ("ground-glass", False, ">=6"): 2, ("solid", False, "6-8"): 2,
                      ("subsolid", True, "<6"): 3, ("solid", True, "6-8"): 3,
                      ("solid", True, ">8"): 3, ("part-solid", False, ">=6"): 3,
                      ("subsolid", True, ">=6"): 3, ("solid", False, ">8"): 4}
# Fleischner 2017, recommendation 4: a part-solid nodule whose solid component exceeds 8 mm
# (or grows, or looks suspicious) warrants PET/CT, biopsy or resection.
PART_SOLID_COMPONENT_WORKUP_MM = 8


@dataclass(frozen=True)
class Finding:
    """One nodule as the rules see it.

    type: "solid", "part-solid" or "ground-glass".
    mean_diameter_mm: mean of long and short axis (mm), unrounded.
    volume_mm3: the nodule's volume (needed only with ``size_by="volume"``).
    solid_component_mean_diameter_mm, solid_component_volume_mm3: the solid component's size
      (part-solid nodules only).
    """

    type: str
    mean_diameter_mm: float
    volume_mm3: float | None = None
    solid_component_mean_diameter_mm: float | None = None
    solid_component_volume_mm3: float | None = None

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"nodule type must be one of {TYPES}, not {self.type!r}")
        if self.type == "part-solid" and self.solid_component_mean_diameter_mm is None:
            raise ValueError("a part-solid nodule needs its solid component's mean diameter")


@dataclass(frozen=True)
class Prior:
    """The same nodule on the prior CT.

    mean_diameter_mm: its mean diameter then (mm); None: the nodule was not there (new).
    months_before: how long before the current CT the prior was taken.
    solid_component_mean_diameter_mm: the prior's solid component (part-solid); None or 0 when
      it had none.
    lung_rads: the category the prior was given, for stepped management; None: the baseline
      category of the prior's size.
    """

    mean_diameter_mm: float | None
    months_before: float = 12.0
    solid_component_mean_diameter_mm: float | None = None
    lung_rads: str | None = None

    def __post_init__(self):
        if self.lung_rads is not None and self.lung_rads not in CATEGORY_ORDER:
            raise ValueError(f"the prior's Lung-RADS category must be one of {CATEGORY_ORDER}")


@dataclass(frozen=True)
class Assessment:
    category: str
    reason: str

    @property
    def management(self) -> str:
        return LUNG_RADS_MANAGEMENT[self.category]


def round_half_up(value: float, places: int) -> float:
    """``value`` rounded to ``places`` decimals, halves away from zero (5.95 -> 6.0), as a
    reader rounds; Python's ``round`` would round halves to even and floats' binary error."""
    return float(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP))


def lung_rads_size(diameter_mm: float | None, volume_mm3: float | None, size_by: str) -> float:
    """The size the Lung-RADS tables compare: mean diameter to one decimal, or whole mm3."""
    if size_by == "diameter":
        return round_half_up(diameter_mm, 1)
    if size_by == "volume":
        if volume_mm3 is None:
            raise ValueError("size_by='volume' needs the volume")
        return round_half_up(volume_mm3, 0)
    raise ValueError(f"size_by must be 'diameter' or 'volume', not {size_by!r}")


def band_category(table, size: float, size_by: str) -> str | None:
    """The category of the half-open band of ``table`` holding ``size``."""
    column = 0 if size_by == "diameter" else 1
    for row in table:
        if size < row[column]:
            return row[2]
    raise AssertionError("the last band is unbounded")


def _baseline(finding: Finding, size_by: str, context: str = "baseline") -> str:
    """The size category of a nodule seen for the first time (``context`` "baseline" or "new")."""
    size = lung_rads_size(finding.mean_diameter_mm, finding.volume_mm3, size_by)
    category = band_category(LUNG_RADS[(finding.type, context)], size, size_by)
    if category is None:  # part-solid from 6 mm total: its solid component decides
        component = lung_rads_size(finding.solid_component_mean_diameter_mm,
                                   finding.solid_component_volume_mm3, size_by)
        category = band_category(LUNG_RADS[("part-solid component", context)], component, size_by)
    return category


def size_text(finding: Finding, size_by: str) -> str:
    """The sizes the tables compared, as a reader would write them."""
    unit = "mm mean diameter" if size_by == "diameter" else "mm3"
    text = f"{lung_rads_size(finding.mean_diameter_mm, finding.volume_mm3, size_by):g} {unit}"
    if finding.type == "part-solid":
        component = lung_rads_size(finding.solid_component_mean_diameter_mm,
                                   finding.solid_component_volume_mm3, size_by)
        text += f", solid component {component:g} {unit.split()[0]}"
    return text


def _higher(a: str, b: str) -> str:
    return max(a, b, key=CATEGORY_ORDER.index)


def lung_rads(finding: Finding, prior: Prior | None = None, *, size_by: str = "diameter",
              suspicious_features: bool = False) -> Assessment:
    """The Lung-RADS v2022 category of one nodule (the rules: module docstring).

    prior: the same nodule on the prior CT (None: baseline screen).
    size_by: "diameter" (mean diameter, one decimal) or "volume" (mm3) for the size bands;
      growth is always judged on the mean diameter.
    suspicious_features: a reader's finding of features that raise the suspicion of cancer
      (spiculation, lymphadenopathy, ...): turns a category 3 or 4 into 4X.
    """
    category, reason = _lung_rads(finding, prior, size_by)
    if suspicious_features and category in ("3", "4A", "4B"):
        return Assessment("4X", f"{reason}; category {category} with additional features that "
                                "raise the suspicion of cancer (reader's input)")
    return Assessment(category, reason)


def _lung_rads(finding: Finding, prior: Prior | None, size_by: str) -> tuple[str, str]:
    kind = finding.type
    if prior is None:
        return _baseline(finding, size_by), f"{kind}, baseline, {size_text(finding, size_by)}"
    if prior.mean_diameter_mm is None:
        return (_baseline(finding, size_by, "new"),
                f"{kind}, new since the prior, {size_text(finding, size_by)}")
    # Growth is judged on the rounded mean diameters; a part-solid nodule's on its solid
    # component, which is new where the prior had none.
    now, then = finding.mean_diameter_mm, prior.mean_diameter_mm
    if kind == "part-solid":
        if not prior.solid_component_mean_diameter_mm:  # rated as a new part-solid nodule
            return _baseline(finding, size_by, "new"), "part-solid, new solid component since the prior"
        now, then = finding.solid_component_mean_diameter_mm, prior.solid_component_mean_diameter_mm
    change_mm = round_half_up(now, 1) - round_half_up(then, 1)
    grew = round_half_up(change_mm, 1) > GROWTH_MM
    if grew and prior.months_before <= GROWTH_WINDOW_MONTHS:
        table = LUNG_RADS[(kind if kind != "part-solid" else "part-solid component", "growing")]
        size = (lung_rads_size(finding.mean_diameter_mm, finding.volume_mm3, size_by)
                if kind != "part-solid" else
                lung_rads_size(finding.solid_component_mean_diameter_mm,
                               finding.solid_component_volume_mm3, size_by))
        what = "solid component" if kind == "part-solid" else "mean diameter"
        return (band_category(table, size, size_by),
                f"{kind}, growing: {what} +{change_mm:.1f} mm in {prior.months_before:g} months")
    if grew:  # > 1.5 mm, but over more than 12 months
        if kind == "ground-glass":
            size = lung_rads_size(finding.mean_diameter_mm, finding.volume_mm3, size_by)
            return (band_category(LUNG_RADS[(kind, "growing")], size, size_by),
                    f"ground-glass, slowly growing: +{change_mm:.1f} mm in "
                    f"{prior.months_before:g} months")
        return "4B", (f"{kind}, slow growth: +{change_mm:.1f} mm in {prior.months_before:g} "
                      "months (v2022: growth over several screens; confirm on the exams between)")
    # Not growing: reclassified by size where it crossed into a higher band, else stepped down.
    # (the prior has no volume: the bands are compared by diameter)
    prior_size = Finding(kind, prior.mean_diameter_mm, None, prior.solid_component_mean_diameter_mm)
    prior_baseline = _baseline(prior_size, "diameter")
    prior_category = prior.lung_rads or prior_baseline
    if _higher(_baseline(finding, "diameter"), prior_baseline) != prior_baseline:
        return _baseline(finding, size_by), f"{kind}, not growing but now in a higher size band"
    stepped = STEP_DOWN.get(prior_category, prior_category)
    return stepped, f"{kind}, stable since the prior (category {prior_category} before)"


def exam_lung_rads(categories) -> str:
    """The exam's category: its most suspicious nodule's; "1" without nodules."""
    categories = [c for c in categories if c is not None]
    return max(categories, key=CATEGORY_ORDER.index) if categories else "1"


def fleischner_band(finding: Finding, size_by: str = "diameter", *, solid_bands=None) -> str:
    """The Fleischner size band: mean diameter rounded to whole mm, or volume in mm3."""
    bands = solid_bands or (FLEISCHNER_SOLID_BANDS if finding.type == "solid"
                            else FLEISCHNER_SUBSOLID_BANDS)
    if size_by == "diameter":
        size, column = round_half_up(finding.mean_diameter_mm, 0), 0
    else:
        size, column = lung_rads_size(None, finding.volume_mm3, "volume"), 1
    for row in bands:
        if size <= row[column]:
            return row[2]
    raise AssertionError("the last band is unbounded")


def _fleischner_key(finding: Finding, multiple: bool, size_by: str) -> tuple:
    kind = finding.type if finding.type == "solid" or not multiple else "subsolid"
    return kind, multiple, fleischner_band(finding, size_by)


def fleischner(finding: Finding, *, multiple: bool = False, risk: str | None = None,
               size_by: str = "diameter") -> str:
    """The Fleischner 2017 recommendation for one nodule.

    multiple: the CT shows more than one nodule.
    risk: the patient's risk, "low" or "high" (Fleischner: age, smoking, family history,
      emphysema, fibrosis, upper lobe, spiculation); None: both texts are given where they differ.
    """
    if risk not in (None, "low", "high"):
        raise ValueError(f"risk must be 'low', 'high' or None, not {risk!r}")
    key = _fleischner_key(finding, multiple, size_by)
    texts = FLEISCHNER[key]
    if None in texts:
        text = texts[None]
    elif risk is not None:
        text = f"{risk} risk: {texts[risk]}"
    else:
        text = f"low risk: {texts['low']}; high risk: {texts['high']}"
    component = finding.solid_component_mean_diameter_mm
    if finding.type == "part-solid" and component is not None and \
            round_half_up(component, 0) > PART_SOLID_COMPONENT_WORKUP_MM:
        text += "; solid component > 8 mm: PET/CT, biopsy or resection recommended"
    label = f"{'multiple' if multiple else 'single'} {key[0]} nodule {key[2]} mm"
    return f"Fleischner 2017, {label}: {text}"


def fleischner_urgency(finding: Finding, *, multiple: bool = False,
                       size_by: str = "diameter") -> float:
    """How pressing the nodule's Fleischner recommendation is (higher: more), size breaking ties."""
    key = _fleischner_key(finding, multiple, size_by)
    component = finding.solid_component_mean_diameter_mm or 0.0
    workup = finding.type == "part-solid" and round_half_up(component, 0) > PART_SOLID_COMPONENT_WORKUP_MM
    return (5 if workup else FLEISCHNER_URGENCY[key]) + finding.mean_diameter_mm / 1000.0


def exam_fleischner(findings, *, risk: str | None = None, size_by: str = "diameter") -> str:
    """The exam's Fleischner recommendation: the most suspicious nodule's, with the multiple-
    nodule rules when there is more than one."""
    findings = list(findings)
    if not findings:
        return "Fleischner 2017: no nodule found; no nodule follow-up"
    multiple = len(findings) > 1
    worst = max(findings, key=lambda f: fleischner_urgency(f, multiple=multiple, size_by=size_by))
    return fleischner(worst, multiple=multiple, risk=risk, size_by=size_by)


def finding_from_record(record: dict) -> Finding | None:
    """The ``Finding`` of a report's nodule record (None where it has no type: an empty mask)."""
    if not record.get("type"):
        return None
    return Finding(record["type"], record["mean_diameter_mm"], record.get("volume_mm3"),
                   record.get("solid_component_mean_diameter_mm"),
                   record.get("solid_component_volume_mm3"))


def readout(record: dict, *, multiple: bool = False, risk: str | None = None) -> dict:
    """The report's per-nodule read-out fields from its measurements and type: ``lung_rads``
    (baseline; None without a type), ``lung_rads_reason`` and ``fleischner``."""
    finding = finding_from_record(record)
    if finding is None:
        return {"lung_rads": None, "lung_rads_reason": None, "fleischner": None}
    assessment = lung_rads(finding)
    return {"lung_rads": assessment.category, "lung_rads_reason": assessment.reason,
            "fleischner": fleischner(finding, multiple=multiple, risk=risk)}


def exam_readout(records: list[dict], *, risk: str | None = None) -> dict:
    """The report's ``exam`` block: the exam's Lung-RADS category and Fleischner recommendation."""
    findings = [f for f in map(finding_from_record, records) if f is not None]
    return {"lung_rads": exam_lung_rads([lung_rads(f).category for f in findings]),
            "fleischner": exam_fleischner(findings, risk=risk)}
