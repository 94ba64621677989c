"""The web app's actions, over the scene logic the Slicer module uses (:mod:`NoduleSAMLib.scene`).

Long work runs as in Slicer: a :class:`~NoduleSAMLib.scene.Job`'s ``work`` on a worker thread
(MRML untouched), its ``finish`` back on the server's event loop, so the page stays responsive
and Cancel stops the work between slices. Errors go to the page (``error``), never to a
traceback in it.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
# torchvision loads triton, whose LLVM crashes the process when Mesa's llvmpipe has loaded its own
# LLVM first (at the first OpenGL context, i.e. the first view): import it before any view.
import torchvision  # noqa: F401
from slicer import vtkMRMLMarkupsNode
from trame.app import get_server
from trame.app.file_upload import ClientFile
from trame_server.utils.asynchronous import create_task, get_event_loop
from trame_slicer import module as trame_slicer_module
from vtkmodules.vtkCommonCore import vtkCommand

from .. import scene as sc
from ..dicom_export import write_dicom_seg
from ..errors import NoduleSAMError
from ..geometry import clip_box3d
from ..outputs import report_dict, write_report, write_seg_nrrd
from ..settings import SENSITIVITIES
from ..volume import IMAGE_SUFFIXES, read_ct
from .page import UPLOAD_END_TRIGGER, UPLOAD_TRIGGER, build_page
from .views import Viewer

EXPORT_URL = "nodulesam-exports"  # the export folder, served read-only under this path
BOX_SIZE_MM = 20.0                # side of the box Add box places around a click
ROI_SETTLE_S = 0.25               # a dragged box's table row updates once it rests this long


def _table_rows(table_node) -> list[dict]:
    """A NoduleSAM table node (``scene.tables``) as one dict per row: numbers as floats
    (NaN as None), text as text."""
    if table_node is None:
        return []
    table = table_node.GetTable()
    rows = [{} for _ in range(table.GetNumberOfRows())]
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        numeric = column.IsNumeric()
        for r, row in enumerate(rows):
            if numeric:
                value = column.GetValue(r)
                row[column.GetName()] = None if np.isnan(value) else float(value)
            else:
                row[column.GetName()] = column.GetValue(r)
    return rows


def _number(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


class WebApp:
    """One server, one Slicer scene, one CT at a time."""

    def __init__(self, out: Path, settings: dict | None = None):
        self.server = get_server("nodulesam", client_type="vue3")
        self.state = self.server.state
        self.server.enable_module(trame_slicer_module)  # its chunked file upload
        self.out = Path(out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.server.enable_module({"serve": {EXPORT_URL: str(self.out)}})
        self.viewer = Viewer(self.server)
        self.logic = sc.Logic()
        self.settings = dict(settings or {})
        self.params: sc.Parameters | None = None
        self.source: Path | None = None       # where the CT was read from
        self._upload_dir: Path | None = None  # the uploaded CT's files, while it is open
        self._chunks: list[dict] = []
        self._cancel = threading.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nodulesam-job")
        self._observed: set[str] = set()
        self._roi_timer = None
        self._placing = None
        self.state.update({
            "trame__title": "NoduleSAM", "ct_name": "", "ct_loaded": False, "busy": False,
            "placing": "", "job_title": "", "job_text": "", "job_progress": 0, "error": "",
            "notice": "", "nodules": [], "rois": [], "selected": "", "exports": [],
            "export_folder": str(self.out), "edited_dialog": False, "edited_names": [],
            "sensitivities": list(SENSITIVITIES), "bind_info": "",
            "sensitivity": self.settings.get("sensitivity",
                                             sc.PARAMETERS_BY_NAME["sensitivity"].default),
        })
        self.state.change("sensitivity")(self._on_sensitivity)
        self.server.trigger(UPLOAD_TRIGGER)(self.upload_chunk)
        self.server.trigger(UPLOAD_END_TRIGGER)(self.upload_end)
        # where a RAS point is drawn in a view (page tests aim the mouse with it)
        self.server.trigger("nodulesam_view_xy")(self.viewer.view_xy)
        self.ui = build_page(self)

    # -- serving -----------------------------------------------------------------------------
    def start(self, host: str, port: int, ready_message: str = "") -> None:
        """Serve until interrupted. ``ready_message`` is printed once the port listens."""
        self.state.bind_info = (f"bound to {host}: this computer only" if host in
                                ("127.0.0.1", "localhost", "::1") else
                                f"bound to {host}: NO AUTHENTICATION")
        if ready_message:
            self.server.controller.on_server_ready.add(lambda **_: print(ready_message, flush=True))
        # trame reads its own options from sys.argv; ours were parsed already
        argv, sys.argv = sys.argv, sys.argv[:1]
        try:
            self.server.start(host=host, port=port, open_browser=False,
                              show_connection_info=False, timeout=0)
        finally:
            sys.argv = argv
            self._cancel.set()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._drop_upload()

    # -- loading -----------------------------------------------------------------------------
    def load_path(self, path: Path, series_uid: str | None = None) -> None:
        """Open a CT from a path on the server (the command line's CT)."""
        self._show_volume(read_ct(path, series_uid), Path(path).name, Path(path))

    def _show_volume(self, volume, name: str, source: Path) -> None:
        """Replace the open CT (and everything on it) with ``volume``."""
        scene = self.viewer.scene
        if self.params is not None:
            p = self.params
            for node in (*p.rois, p.outputSegmentation, p.candidateTable, p.measurementTable,
                         p.inputVolume):
                if node is not None:
                    scene.RemoveNode(node)
        self._observed.clear()
        node = sc.add_volume_node(scene, volume, name)
        self.params = sc.parameters_for(node, **(self.settings
                                                 | {"sensitivity": self.state.sensitivity}))
        self.source = source
        self.viewer.show_ct(node)
        self.state.update({"ct_name": f"{name} ({' x '.join(map(str, volume.hu.shape[::-1]))})",
                           "ct_loaded": True, "selected": "", "exports": [],
                           "notice": f"Opened {name}."})
        self._refresh()

    def upload_chunk(self, files: list) -> None:
        """Files from the page, a chunk at a time; an empty chunk ends the upload."""
        if files:
            self._chunks.extend(files)
            return
        files, self._chunks = self._chunks, []
        if files:
            self._start("Open", self._load_upload, files)

    def upload_end(self, ok: bool, message: str = "") -> None:
        if not ok:
            with self.state:
                self.state.error = f"the upload failed in the browser: {message}"

    async def _load_upload(self, files: list) -> None:
        folder = Path(tempfile.mkdtemp(prefix="nodulesam-upload-"))
        try:
            written = []
            for number, data in enumerate(files):
                file = ClientFile(data)
                name = Path(file.name or f"file{number}").name
                path = folder / (name if len(files) == 1 else f"{number:05d}_{name}")
                path.write_bytes(file.content or b"")
                written.append(path)
            single = len(written) == 1 and written[0].name.lower().endswith(IMAGE_SUFFIXES)
            target = written[0] if single else folder
            name = written[0].name if single else f"DICOM series ({len(written)} files)"
            self._progress("Open", 0, 0, f"reading {name}")
            volume = await asyncio.get_running_loop().run_in_executor(self._executor, read_ct,
                                                                      target)
        except NoduleSAMError as err:  # named as the user knows them, not by the server's copy
            shutil.rmtree(folder, ignore_errors=True)
            raise NoduleSAMError(str(err).replace(f"{folder}/", "").replace(
                str(folder), "the uploaded folder")) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._show_volume(volume, name, target)
        self._drop_upload()
        self._upload_dir = folder

    def _drop_upload(self) -> None:
        if self._upload_dir is not None:
            shutil.rmtree(self._upload_dir, ignore_errors=True)
            self._upload_dir = None

    # -- actions (buttons) -------------------------------------------------------------------
    def auto_segment(self) -> None:
        self._start("Auto-segment", self._auto_segment)

    def refine(self) -> None:
        self._start("Refine", self._refine, None)

    def refine_edited(self, policy: str) -> None:
        """The answer to the edited-segments dialog: keep, replace or add."""
        self.state.edited_dialog = False
        self._start("Refine", self._refine, policy)

    def add_box(self) -> None:
        self._start("Add box", self._place, "box")

    def click_nodule(self) -> None:
        self._start("Click nodule", self._place, "click")

    def delete_box(self) -> None:
        self._start("Delete box", self._delete_selected)

    def export(self) -> None:
        self._start("Export", self._export)

    def cancel(self) -> None:
        self._cancel.set()
        if self._placing is not None:
            self._stop_placing()
            self.state.update({"placing": "", "notice": "Placing cancelled."})

    def select_row(self, name: str) -> None:
        """Select a nodule and centre the views on its box."""
        roi = self._roi(name)
        if roi is None:
            return
        self.state.selected = name
        center = [0.0, 0.0, 0.0]
        roi.GetCenterWorld(center)
        self.viewer.jump_to(center)

    # -- running -----------------------------------------------------------------------------
    def _start(self, title: str, action, *args) -> None:
        if self.state.busy:
            self.state.notice = f"{self.state.job_title} is running: wait, or press Cancel"
            return
        if self.params is None:
            if title != "Open":
                self.state.error = "open a CT first (a file or a DICOM series folder)"
                return
        create_task(self._guard(title, action, *args))

    async def _guard(self, title: str, action, *args) -> None:
        """Run an action with the page busy; its errors become the page's error line."""
        self._cancel.clear()
        with self.state:
            self.state.update({"busy": True, "error": "", "notice": "", "job_title": title,
                               "job_text": "starting", "job_progress": -1})
        error = notice = None
        try:
            notice = await action(*args)
        except sc.Cancelled:
            notice = f"{title}: cancelled; nothing more was written"
        except NoduleSAMError as err:
            error = str(err)
        except Exception as err:  # a bug: the page says so, the server's log has the details
            traceback.print_exc()
            error = (f"{title} failed ({type(err).__name__}: {err}); this is a bug: see the "
                     "server's log")
        with self.state:
            self.state.update({"busy": False, "job_progress": 0, "job_text": "",
                               "error": error or "", "notice": notice or self.state.notice})
            self._refresh()

    def _progress(self, title: str, done: int, total: int, text: str) -> None:
        with self.state:
            self.state.job_title = title
            self.state.job_text = text
            self.state.job_progress = 100.0 * done / total if total else -1

    async def _run(self, job: sc.Job):
        """A job's work on the worker thread (reporting progress, stopped by Cancel), then its
        finish here on the event loop, where MRML may be touched."""
        loop = asyncio.get_running_loop()
        cancel = self._cancel

        def progress(done, total, text=""):
            if cancel.is_set():
                raise sc.Cancelled()
            loop.call_soon_threadsafe(self._progress, job.title, done, total, text)

        result = await loop.run_in_executor(self._executor, job.work, progress)
        if cancel.is_set():
            raise sc.Cancelled()
        return job.finish(result)

    # -- the actions' work -------------------------------------------------------------------
    async def _auto_segment(self) -> str | None:
        added = await self._run(self.logic.detect_job(self.params))
        with self.state:
            self._refresh()
        if not self.params.rois:
            raise NoduleSAMError(f"no nodule candidates found at sensitivity "
                                 f"'{self.params.sensitivity}': try 'high', or Add box / Click "
                                 "nodule and Refine")
        notice = await self._refine(None)
        if added and self.params.outputSegmentation is not None:
            self.viewer.fit_three_d()
            self.select_row(added[0].GetName())
        return f"Detect: {len(added)} new box(es). {notice or ''}"

    async def _refine(self, policy: str | None) -> str | None:
        plan = self.logic.plan_refine(self.params)
        states = self.logic.refine_states(self.params, plan)
        edited = sorted(name for name, state in states.items() if state == sc.EDITED)
        if edited and policy is None:  # ask; the dialog's answer comes back as refine_edited
            with self.state:
                self.state.update({"edited_names": edited, "edited_dialog": True})
            return "Refine: waiting for your answer about the segments you edited"
        first = self.params.outputSegmentation is None
        summary = await self._run(self.logic.refine_job(self.params, policy or sc.KEEP, plan))
        self.viewer.show_segmentation(self.params.outputSegmentation)
        if first:
            self.viewer.fit_three_d()
        return " ".join([f"Refine: refined {len(summary.refined)}, unchanged "
                         f"{len(summary.unchanged)}, kept {len(summary.kept_edited)} edited by "
                         "hand.", *summary.messages])

    async def _place(self, kind: str) -> str:
        """Start placing a point in a slice view; where it lands becomes a box (``box``: a
        ``BOX_SIZE_MM`` box around it; ``click``: the box the click proposes)."""
        self._stop_placing()
        point = self.viewer.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "NoduleSAM click")
        point.CreateDefaultDisplayNodes()
        point.AddObserver(vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                          lambda caller, event: get_event_loop().call_soon(
                              self._placed, caller, kind))
        self._placing = point
        self.viewer.app.markups_logic.place_node(point, False)
        self.state.placing = kind
        what = "the box's centre" if kind == "box" else "the nodule"
        return f"Click {what} in a slice view (Cancel stops)."

    def _stop_placing(self) -> None:
        if self._placing is not None:
            self.viewer.app.markups_logic.disable_place_mode()
            if self._placing.GetScene() is not None:
                self.viewer.scene.RemoveNode(self._placing)
            self._placing = None

    def _placed(self, point, kind: str) -> None:
        if point is not self._placing or not point.GetNumberOfControlPoints():
            return
        world = [0.0, 0.0, 0.0]
        point.GetNthControlPointPositionWorld(0, world)
        self._stop_placing()
        with self.state:
            self.state.placing = ""
            try:
                roi = (self.logic.add_click(self.params, world) if kind == "click"
                       else self._add_box_at(world))
            except NoduleSAMError as err:
                self.state.error = str(err)
                return
            self.state.update({"error": "", "notice": f"'{roi.GetName()}' placed: drag its "
                               "handles to fit the nodule, then Refine.",
                               "selected": roi.GetName()})
            self._refresh()

    def _add_box_at(self, world):
        volume_node = self.params.inputVolume
        volume = sc.ct_from_volume_node(volume_node)
        zyx = np.array(sc.voxel_from_world(world, volume_node))
        if not all(0 <= v < n for v, n in zip(zyx, volume.hu.shape)):
            raise NoduleSAMError("the click is outside the CT: click inside the CT")
        half = np.maximum(np.round(BOX_SIZE_MM / 2 / volume.spacing_zyx_mm), 1).astype(int)
        box = clip_box3d(tuple(int(v) for pair in zip(zyx - half, zyx + half + 1) for v in pair),
                         volume.hu.shape)
        roi = sc.add_roi(self.params)
        sc.set_roi_to_box(roi, volume_node, box)
        sc.update_candidate_table(self.params)
        return roi

    async def _delete_selected(self) -> str:
        name = self.state.selected
        roi = self._roi(name)
        if roi is None:
            raise NoduleSAMError("select a nodule in the table first")
        p = self.params
        segment_id = sc.segment_of_roi(p, roi)
        kept = segment_id is not None and sc.segment_edited(p, segment_id)
        if segment_id is not None and not kept:
            p.outputSegmentation.GetSegmentation().RemoveSegment(segment_id)
        statuses = {row["Name"]: row.get("Status", "") for row in _table_rows(p.measurementTable)}
        self.viewer.scene.RemoveNode(roi)
        sc.update_candidate_table(p)
        if p.measurementTable is not None:
            sc.update_measurement_table(p, sc.ct_from_volume_node(p.inputVolume), statuses)
        self.state.selected = ""
        return (f"Deleted '{name}'; its segment was edited by hand, so it is kept." if kept
                else f"Deleted '{name}' and its segment.")

    async def _export(self) -> str:
        result = sc.result_from_scene(self.params, self.source)
        numbers = [int(p.name.split("-")[1]) for p in self.out.glob("export-*")
                   if p.name.split("-")[1].isdigit()]
        folder = self.out / f"export-{max(numbers, default=0) + 1:03d}"
        settings = sc.settings_from_parameters(self.params).to_dict()
        report = report_dict(result, {"settings": settings})
        dicom = self.source is not None and self.source.is_dir()

        def write():
            folder.mkdir(parents=True)
            files = [write_seg_nrrd(result, folder / "nodules.seg.nrrd"),
                     write_report(report, folder / "nodules.json")]
            if dicom:
                files.append(write_dicom_seg(result, folder / "nodules.seg.dcm"))
            return files

        self._progress("Export", 0, 0, f"writing {folder}")
        files = await asyncio.get_running_loop().run_in_executor(self._executor, write)
        self.state.exports = [{"name": f.name, "path": str(f),
                               "url": f"{EXPORT_URL}/{folder.name}/{f.name}"} for f in files]
        skipped = "" if dicom else " No DICOM SEG: the CT was not read from a DICOM series."
        return (f"Exported {len(result.nodules)} nodule(s) to {folder}.{skipped} "
                + " ".join(result.messages)).strip()

    # -- what the page shows -----------------------------------------------------------------
    def _on_sensitivity(self, sensitivity, **_) -> None:
        self.settings["sensitivity"] = sensitivity
        if self.params is not None:
            self.params.sensitivity = sensitivity

    def _roi(self, name: str):
        if self.params is None:
            return None
        return next((roi for roi in self.params.rois if roi.GetName() == name), None)

    def _on_roi_modified(self, caller, event) -> None:
        """A box moved (dragged, or set by the logic): update its row once it rests."""
        if self._roi_timer is not None:
            self._roi_timer.cancel()
        self._roi_timer = get_event_loop().call_later(ROI_SETTLE_S, self._roi_settled)

    def _roi_settled(self) -> None:
        self._roi_timer = None
        if self.params is not None and self.params.inputVolume is not None:
            sc.update_candidate_table(self.params)
        with self.state:
            self._refresh()

    def _status(self, roi, measured: dict) -> str:
        segment_id = sc.segment_of_roi(self.params, roi)
        if segment_id is None:
            return "no segment: press Refine"
        if sc.segment_edited(self.params, segment_id):
            return sc.EDITED
        segment = self.params.outputSegmentation.GetSegmentation().GetSegment(segment_id)
        try:
            key = json.loads(sc.segment_tag(segment, sc.SEGMENT_INPUT_TAG) or "{}")
            refined_box = key.get("box")
        except ValueError:
            refined_box = None
        box = list(sc.box_from_roi(roi, self.params.inputVolume))
        if refined_box is not None and box != refined_box:
            return "box edited: press Refine"
        return measured.get("Status") or "segmented"

    def _refresh(self) -> None:
        """The nodule table and box list from the scene's tables and ROIs."""
        p = self.params
        rois = p.rois if p is not None else []
        for roi in rois:
            if roi.GetID() not in self._observed:
                self._observed.add(roi.GetID())
                self.viewer.show_roi(roi)
                for event in (vtkMRMLMarkupsNode.PointModifiedEvent, vtkCommand.ModifiedEvent):
                    roi.AddObserver(event, self._on_roi_modified)
        candidates = {row["Name"]: row for row in _table_rows(p.candidateTable)} if p else {}
        measured = {row["Name"]: row for row in _table_rows(p.measurementTable)} if p else {}
        nodules, boxes = [], []
        for roi in rois:
            name = roi.GetName()
            c, m = candidates.get(name, {}), measured.get(name, {})
            nodules.append({
                "name": name, "score": _number(c.get("Score"), 2),
                "volume": _number(m.get("Volume (mm3)"), 0),
                "diameter": _number(m.get("Mean diameter (mm)"), 1),
                "mean_hu": _number(m.get("Mean HU"), 0), "type": m.get("Type", ""),
                "lung_rads": m.get("Lung-RADS", ""), "slices": c.get("Slices", ""),
                "status": self._status(roi, m), "volume_mm3": m.get("Volume (mm3)"),
            })
            center = [0.0, 0.0, 0.0]
            roi.GetCenterWorld(center)
            axes = sc.matrix_to_array(roi.GetObjectToWorldMatrix())[:3, :3]
            boxes.append({"name": name, "center_ras": center, "size_mm": list(roi.GetSize()),
                          "axes_ras": axes.T.tolist(), "box_ijk": (
                              list(sc.box_from_roi(roi, p.inputVolume))
                              if roi.GetNumberOfControlPoints() else None)})
        self.state.nodules = nodules
        self.state.rois = boxes
        if self.state.selected and self._roi(self.state.selected) is None:
            self.state.selected = ""
