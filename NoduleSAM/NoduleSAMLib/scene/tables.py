"""The candidates and measurements tables (``vtkMRMLTableNode``): one row per ROI, column
titles as headers, and each row's ROI kept so a click on a row finds its nodule."""
from __future__ import annotations

import json

import numpy as np
import vtk

from ..management import readout
from ..measure import measure_nodule
from ..nodule_type import classify_nodule
from ..volume import CTVolume
from .parameters import Parameters
from .rois import roi_score
from .segments import segment_of_roi, segment_voxels
from .volumes import box_from_roi, crop_volume

TABLE_ROW_NODES_ATTRIBUTE = "NoduleSAM.RowNodeIDs"  # table node -> JSON list, row r -> ROI ID


def _fill_table(table_node, columns: list[tuple[str, str]], rows: list[dict], row_nodes) -> None:
    """Rewrite ``table_node`` with ``columns`` (name, 'string'|'double') and ``rows``; row r is
    about ``row_nodes[r]`` (its node ID is kept on the table, see :func:`roi_of_table_row`)."""
    table = table_node.GetTable()
    table_node.RemoveAllColumns()
    # As Slicer's Segment Statistics does: without it qMRMLTableModel shows the column names as
    # row 0, and every row the user clicks is one off.
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.SetAttribute(TABLE_ROW_NODES_ATTRIBUTE, json.dumps([n.GetID() for n in row_nodes]))
    for name, kind in columns:
        array = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
        array.SetName(name)
        array.SetNumberOfValues(len(rows))
        for r, row in enumerate(rows):
            value = row.get(name)
            array.SetValue(r, ("" if value is None else str(value)) if kind == "string"
                           else (np.nan if value is None else float(value)))
        table.AddColumn(array)
    for index, (name, _) in enumerate(columns):
        table_node.SetColumnProperty(index, "title", name)
    table_node.Modified()


def roi_of_table_row(table_node, row: int):
    """The ROI that row ``row`` of a NoduleSAM table is about (None if gone or out of range)."""
    try:
        ids = json.loads(table_node.GetAttribute(TABLE_ROW_NODES_ATTRIBUTE) or "[]")
    except ValueError:
        return None
    scene = table_node.GetScene()
    return scene.GetNodeByID(ids[row]) if scene is not None and 0 <= row < len(ids) else None


def _ensure_table(params: Parameters, parameter: str, name: str):
    node = getattr(params, parameter)
    if node is None:
        node = params.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        setattr(params, parameter, node)
    return node


CANDIDATE_COLUMNS = [("Name", "string"), ("Score", "double"), ("Size (mm)", "string"),
                     ("Slices", "string"), ("Segment", "string")]
MEASUREMENT_COLUMNS = [("Name", "string"), ("Volume (mm3)", "double"),
                       ("Long axis (mm)", "double"), ("Short axis (mm)", "double"),
                       ("Mean diameter (mm)", "double"), ("Mean HU", "double"),
                       ("Type", "string"), ("Lung-RADS", "string"), ("Fleischner", "string"),
                       ("Slices", "string"), ("Status", "string")]


def update_candidate_table(params: Parameters) -> None:
    """One row per ROI (in list order): score, size, slice range; row n is ``params.rois[n]``."""
    rows = []
    volume_node = params.inputVolume
    for roi in params.rois:
        row = {"Name": roi.GetName(), "Score": roi_score(roi)}
        size = [0.0] * 3
        roi.GetSizeWorld(size)
        row["Size (mm)"] = " x ".join(f"{v:.1f}" for v in size)
        if volume_node is not None and roi.GetNumberOfControlPoints():
            z0, z1 = box_from_roi(roi, volume_node)[:2]
            row["Slices"] = f"{z0}-{z1 - 1}"
        row["Segment"] = "yes" if segment_of_roi(params, roi) else ""
        rows.append(row)
    _fill_table(_ensure_table(params, "candidateTable", "NoduleSAM candidates"), CANDIDATE_COLUMNS,
                rows, params.rois)


def measure_segment(params: Parameters, volume: CTVolume, segment_id: str) -> tuple[dict, str]:
    """``measure_nodule`` and the nodule type (``nodule_type.classify_nodule``) of a segment as it
    is now (hand edits included), and its slice range; measured on the segment's bounding box,
    not on a CT-sized mask."""
    flat = segment_voxels(params.outputSegmentation, segment_id, params.inputVolume)
    if flat.size == 0:
        empty = np.zeros((1, 1, 1), dtype=bool)
        return measure_nodule(volume, empty) | classify_nodule(volume, empty), ""
    zyx = np.unravel_index(flat, volume.hu.shape)
    lows = [int(v.min()) for v in zyx]
    box = (lows[0], int(zyx[0].max()) + 1, lows[1], int(zyx[1].max()) + 1, lows[2],
           int(zyx[2].max()) + 1)
    sub = crop_volume(volume, box)
    mask = np.zeros(sub.hu.shape, dtype=bool)
    mask[tuple(v - low for v, low in zip(zyx, lows))] = True
    return measure_nodule(sub, mask) | classify_nodule(sub, mask), f"{box[0]}-{box[1] - 1}"


def update_measurement_table(params: Parameters, volume: CTVolume, statuses: dict | None = None):
    """Measure every ROI's segment as it is now (hand edits included) into the table node, with
    its type and its Lung-RADS and Fleischner read-out (decision support, ``management``)."""
    rows, measured, statuses = [], [], statuses or {}
    segments = [(roi, segment_of_roi(params, roi)) for roi in params.rois]
    segments = [(roi, segment_id) for roi, segment_id in segments if segment_id is not None]
    for roi, segment_id in segments:
        measured.append(roi)
        m, slices = measure_segment(params, volume, segment_id)
        m |= readout(m, multiple=len(segments) > 1)
        rows.append({"Name": roi.GetName(), "Volume (mm3)": m["volume_mm3"],
                     "Long axis (mm)": m["long_axis_mm"], "Short axis (mm)": m["short_axis_mm"],
                     "Mean diameter (mm)": m["mean_diameter_mm"], "Mean HU": m["mean_hu"],
                     "Type": m["type"] or "", "Lung-RADS": m["lung_rads"] or "",
                     "Fleischner": m["fleischner"] or "", "Slices": slices,
                     "Status": statuses.get(roi.GetName(), "")})
    _fill_table(_ensure_table(params, "measurementTable", "NoduleSAM measurements"),
                MEASUREMENT_COLUMNS, rows, measured)
