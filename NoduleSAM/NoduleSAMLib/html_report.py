"""The report for people: one self-contained HTML page (images inline) with the exam summary on
top and a row per nodule: its measurements, type and category, and its key axial image twice
(the whole slice with the nodule marked, and a zoom with its contour)."""
from __future__ import annotations

import base64
import os
from pathlib import Path

from .outputs import _atomic_target, nodule_key_png
from .pipeline import Result

DISCLAIMER = ("Decision support for a radiologist, not a diagnosis. Every nodule, measurement, "
              "type and category must be reviewed by a radiologist before it is reported.")

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>NoduleSAM report: {{ source_name }}</title>
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; }
.disclaimer { border: 2px solid #c60; background: #fff4e5; padding: 0.6em; font-weight: bold; }
.number { text-align: right; }
img { max-width: 640px; }
</style></head><body>
<h1>NoduleSAM report</h1>
<p class="disclaimer">{{ disclaimer }}</p>
<h2>Exam</h2>
<table id="exam">
<tr><th>CT</th><td>{{ report.input.source }}</td></tr>
<tr><th>Volume</th><td>{{ report.input.shape_zyx | join(" x ") }} voxels (z, y, x) of
  {{ spacing }} mm</td></tr>
<tr><th>Nodules</th><td>{{ report.nodules | length }}</td></tr>
{% if report.exam %}
<tr><th>Lung-RADS v2022 (exam)</th><td>{{ report.exam.lung_rads if report.exam.lung_rads is not none else "n/a" }}</td></tr>
<tr><th>Fleischner 2017</th><td>{{ report.exam.fleischner if report.exam.fleischner is not none else "n/a" }}</td></tr>
{% endif %}
{% for message in messages %}<tr><th>Note</th><td>{{ message }}</td></tr>{% endfor %}
</table>
<h2>Nodules</h2>
{% if not rows %}<p>No nodule was found.</p>{% else %}
<table id="nodules">
<tr><th>Nodule</th><th>Volume (mm³)</th><th>Long x short axis (mm)</th><th>Mean diameter (mm)</th>
<th>Mean HU</th><th>Type</th><th>Lung-RADS</th><th>Fleischner</th><th>Key image (axial)</th></tr>
{% for row in rows %}
<tr class="nodule" id="{{ row.id }}">
<td>{{ row.record.name }}<br><small>{{ row.record.source }}{% if row.record.score is not none %},
  score {{ "%.3f" | format(row.record.score) }}{% endif %}</small></td>
<td class="number">{{ "%.0f" | format(row.record.volume_mm3) }}</td>
<td class="number">{{ "%.1f" | format(row.record.long_axis_mm) }} x {{ "%.1f" | format(row.record.short_axis_mm) }}</td>
<td class="number">{{ "%.1f" | format(row.record.mean_diameter_mm) }}</td>
<td class="number">{{ "%.0f" | format(row.record.mean_hu) if row.record.mean_hu is not none else "" }}</td>
<td>{{ row.record.type or "" }}</td>
<td>{{ row.record.lung_rads or "" }}</td>
<td>{{ row.record.fleischner or "" }}</td>
<td><img alt="{{ row.record.name }}: its key axial slice, whole and zoomed"
  src="data:image/png;base64,{{ row.image }}"></td>
</tr>
{% endfor %}
</table>
{% endif %}
<p><small>Diameters follow RECIST 1.1 / Fleischner 2017 (long axis, perpendicular short axis,
mean of the two), edge to edge, on the nodule's largest connected part. NoduleSAM
{{ version }}.</small></p>
</body></html>
"""


def write_html_report(result: Result, report: dict, path: str | Path) -> Path:
    """The HTML report of ``result`` and its JSON ``report`` (``outputs.report_dict``)."""
    import jinja2

    from . import __version__

    labelmap = result.labelmap()
    rows = [{"id": f"nodule-{number}", "record": record,
             "image": base64.b64encode(nodule_key_png(result, nodule, labelmap)).decode("ascii")}
            for number, (nodule, record) in enumerate(zip(result.nodules, report["nodules"]), 1)]
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    page = environment.from_string(TEMPLATE).render(
        report=report, rows=rows, disclaimer=report.get("disclaimer", DISCLAIMER),
        source_name=Path(report["input"]["source"] or "CT").name, version=__version__,
        spacing=" x ".join(f"{v:.2f}" for v in report["input"]["spacing_ijk_mm"]),
        messages=report.get("messages", []) + report["input"].get("warnings", []))
    path = Path(path)
    partial = _atomic_target(path)
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, path)
    return path
