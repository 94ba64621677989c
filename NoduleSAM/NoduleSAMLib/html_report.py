"""The report for people: one self-contained HTML page (images inline) with the exam summary on
top and a row per nodule: its measurements, type and category, and its key axial image twice
(the whole slice with the nodule marked, and a zoom with its contour); the same as a PDF."""
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


def write_pdf_report(result: Result, report: dict, path: str | Path) -> Path:
    """The same report as a PDF (matplotlib, offline): a first page with the disclaimer, the exam
    and a table of the nodules, then a page per nodule with its key axial slice whole and zoomed
    and its read-out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    from .outputs import _draw_key_images

    def cell(value, digits=1):
        if value is None:
            return ""
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    exam = report.get("exam") or {}
    records = report["nodules"]
    path = Path(path)
    partial = _atomic_target(path)
    labelmap = result.labelmap()
    with PdfPages(partial) as pdf:
        page = plt.figure(figsize=(8.27, 11.69))  # A4 portrait
        page.text(0.06, 0.95, "NoduleSAM report", fontsize=18, weight="bold")
        page.text(0.06, 0.91, report.get("disclaimer", DISCLAIMER), fontsize=9, color="#a04000",
                  wrap=True)
        lines = [f"CT: {report['input']['source']}",
                 f"Nodules: {len(records)}",
                 f"Lung-RADS v2022 (exam): {exam.get('lung_rads') or 'n/a'}",
                 f"Fleischner 2017: {exam.get('fleischner') or 'n/a'}"]
        for row, line in enumerate(lines):
            page.text(0.06, 0.85 - 0.025 * row, line, fontsize=9, wrap=True)
        if records:
            axis = page.add_axes([0.06, 0.1, 0.88, 0.6])
            axis.axis("off")
            rows = [[r["name"], cell(r["volume_mm3"], 0),
                     f"{cell(r['long_axis_mm'])} x {cell(r['short_axis_mm'])}",
                     cell(r["mean_diameter_mm"]), cell(r.get("mean_hu"), 0), cell(r.get("type")),
                     cell(r.get("lung_rads"))] for r in records]
            table = axis.table(cellText=rows, loc="upper center",
                               colLabels=["Nodule", "Volume mm³", "Axes mm", "Mean diam. mm",
                                          "Mean HU", "Type", "Lung-RADS"])
            table.auto_set_font_size(False)
            table.set_fontsize(8)
        pdf.savefig(page)
        plt.close(page)
        for nodule, record in zip(result.nodules, records):
            page = plt.figure(figsize=(8.27, 11.69))
            full_axis = page.add_axes([0.05, 0.45, 0.44, 0.44])
            zoom_axis = page.add_axes([0.51, 0.45, 0.44, 0.44])
            _draw_key_images(full_axis, zoom_axis, result, nodule, labelmap)
            text = [record["name"],
                    f"Volume {cell(record['volume_mm3'], 0)} mm³; long x short axis "
                    f"{cell(record['long_axis_mm'])} x {cell(record['short_axis_mm'])} mm; mean "
                    f"diameter {cell(record['mean_diameter_mm'])} mm; mean "
                    f"{cell(record.get('mean_hu'), 0)} HU",
                    f"Type: {cell(record.get('type')) or 'n/a'}",
                    f"Lung-RADS v2022: {cell(record.get('lung_rads')) or 'n/a'}"
                    + (f" ({record['lung_rads_reason']})" if record.get("lung_rads_reason") else ""),
                    f"Fleischner 2017: {cell(record.get('fleischner')) or 'n/a'}"]
            for row, line in enumerate(text):
                page.text(0.05, 0.38 - 0.03 * row, line, fontsize=10 if row else 13, wrap=True)
            page.text(0.05, 0.04, report.get("disclaimer", DISCLAIMER), fontsize=7,
                      color="#a04000", wrap=True)
            pdf.savefig(page)
            plt.close(page)
    os.replace(partial, path)
    return path
