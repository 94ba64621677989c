"""The web app (``nodulesam serve``) end to end in a real browser: a server subprocess on a free
127.0.0.1 port, Debian's Chromium driven by Playwright, a real CT (24 original DICOM slices of
LIDC-IDRI-0001 around its first nodule) and the bundled models.

Skips without trame-slicer/Playwright (the ``web`` and ``test`` extras), without
``/usr/bin/chromium`` (the skip says how to install it) or without the shared LIDC data.
Screenshots of each step go to ``<tmp>/screens`` (and to ``$NODULESAM_WEB_SCREENSHOTS`` when
set, which is how ``docs/images/web_*.jpg`` were made).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from web_browser import (CHROMIUM, CHROMIUM_ARGS, INSTALL_CHROMIUM, READY, WebServer,  # noqa: E402
                         drag, listening_addresses, page_point, state, view_image,
                         views_have_frames, wait_state)

from NoduleSAMLib import web  # noqa: E402
from NoduleSAMLib.cli import main  # noqa: E402

CROP_SLICES = (78, 102)  # LIDC-IDRI-0001's first nodule lies in these slices
JOB_TIMEOUT_S = 300


def _needs_browser():
    pytest.importorskip("trame_slicer", reason='the web extra is not installed: pip install '
                        '"nodulesam[web]" and pip install --no-deps slicer-layer-dm (docs/web.md)')
    pytest.importorskip("playwright", reason="Playwright is not installed: pip install playwright")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found; install Chromium: {INSTALL_CHROMIUM}")


# -- no browser needed --------------------------------------------------------------------------
def test_binds_to_this_computer_unless_told_otherwise(capsys):
    line, warning = web.bind_message(web.DEFAULT_HOST, 8080, allow_remote=False)
    assert web.DEFAULT_HOST == "127.0.0.1" and "this computer only" in line and warning is None
    assert web.bind_message("localhost", 8080, False)[1] is None
    with pytest.raises(web.NoduleSAMError, match="no authentication.*--allow-remote"):
        web.bind_message("0.0.0.0", 8080, allow_remote=False)
    line, warning = web.bind_message("0.0.0.0", 8080, allow_remote=True)
    assert "bound to 0.0.0.0" in line and "NO AUTHENTICATION" in warning
    # the command line refuses before anything is imported or bound
    assert main(["serve", "--host", "0.0.0.0", "--port", "8080"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_the_web_app_never_overwrites_a_segment_edited_by_hand(nodule_crop_0001, tmp_path):
    """The app's own actions, in this process (no browser) on a real CT crop: Refine asks
    before touching a hand-edited segment, Keep keeps it, Delete box keeps it."""
    pytest.importorskip("trame_slicer", reason='the web extra is not installed: pip install '
                        '"nodulesam[web]" and pip install --no-deps slicer-layer-dm (docs/web.md)')
    from trame_server.utils.asynchronous import get_event_loop

    from NoduleSAMLib import scenarios
    from NoduleSAMLib import scene as sc
    from NoduleSAMLib.web.app import WebApp

    crop, reference = nodule_crop_0001
    app = WebApp(tmp_path / "exports")
    app._show_volume(crop, "crop", tmp_path / "crop.nrrd")
    roi = app._add_box_at(crop.zyx_to_ras(np.argwhere(reference).mean(axis=0)))
    loop = get_event_loop()

    def press(action, *args):
        """A button: the action as the page runs it; returns the page's notice and error."""
        loop.run_until_complete(app._guard("test", action, *args))
        return app.state.notice, app.state.error

    notice, error = press(app._refine, None)
    assert not error and "refined 1" in notice, (notice, error)
    params = app.params
    segment_id = sc.segment_of_roi(params, roi)
    shape = crop.hu.shape
    edited = scenarios._segment_mask_by_id(params, segment_id, shape)
    z, y, x = np.argwhere(edited)[0]
    edited[z, max(y - 3, 0):y, x:x + 3] = True  # the user paints three voxels rows
    scenarios._paint_by_hand(params, segment_id, edited)
    roi.SetSize(*(np.array(roi.GetSize()) + 3.0))  # and edits the box: Refine would redo it
    notice, error = press(app._refine, None)
    assert not error and app.state.edited_dialog and app.state.edited_names == [roi.GetName()]
    assert np.array_equal(scenarios._segment_mask_by_id(params, segment_id, shape), edited)
    notice, error = press(app._refine, sc.KEEP)
    assert not error and "kept 1 edited by hand" in notice, notice
    assert np.array_equal(scenarios._segment_mask_by_id(params, segment_id, shape), edited)
    row, = app.state.nodules
    assert row["status"] == sc.EDITED
    app.state.selected = roi.GetName()
    notice, error = press(app._delete_selected)
    assert not error and "kept" in notice and not params.rois
    assert params.outputSegmentation.GetSegmentation().GetSegment(segment_id) is not None


# -- the browser --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dicom_crop(tmp_path_factory, series_0001, ct_0001) -> Path:
    """The original DICOM files of slices 78-101 of LIDC-IDRI-0001 (512 x 512 x 24)."""
    import pydicom

    z0, z1 = CROP_SLICES
    wanted = ct_0001.zyx_to_lps(np.column_stack([np.arange(z0, z1), np.zeros(z1 - z0),
                                                 np.zeros(z1 - z0)]))
    folder = tmp_path_factory.mktemp("dicom") / "LIDC-IDRI-0001-crop"
    folder.mkdir()
    for file in sorted(series_0001.glob("*.dcm")):
        position = np.array(pydicom.dcmread(file, stop_before_pixels=True).ImagePositionPatient,
                            float)
        if np.min(np.linalg.norm(wanted - position, axis=1)) < 0.05:
            shutil.copy(file, folder / file.name)
    assert len(list(folder.iterdir())) == z1 - z0
    return folder


@pytest.fixture(scope="module")
def reference_centre(reference_0001) -> np.ndarray:
    """The readers' nodule centre in the crop's voxels ``[z, y, x]``."""
    z0, z1 = CROP_SLICES
    return np.argwhere(reference_0001[z0:z1] > 0).mean(axis=0)


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    folders = [tmp_path_factory.mktemp("screens")]
    if os.environ.get("NODULESAM_WEB_SCREENSHOTS"):
        folders.append(Path(os.environ["NODULESAM_WEB_SCREENSHOTS"]))
        folders[-1].mkdir(parents=True, exist_ok=True)

    def shoot(page, name: str) -> None:
        for folder in folders:
            page.screenshot(path=str(folder / f"web_{name}.jpg"), type="jpeg", quality=80)
    return shoot


@pytest.fixture(scope="module")
def server(tmp_path_factory, dicom_crop):
    _needs_browser()
    folder = tmp_path_factory.mktemp("web")
    server = WebServer([str(dicom_crop), "--out", str(folder / "exports")], folder / "server.log")
    server.exports = folder / "exports"
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    _needs_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1500, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.goto(server.url)
    page.wait_for_function("window.trame && window.trame.state && "
                           "window.trame.state.get('ct_loaded') !== undefined", timeout=60_000)
    views_have_frames(page)
    yield page
    context.close()


def test_server_listens_on_127_0_0_1_only_and_says_so(server):
    ready = next(line for line in server.lines if line.startswith(READY))
    assert f"http://127.0.0.1:{server.port}/" in ready and "this computer only" in ready
    addresses = listening_addresses(server.port)
    if addresses:  # Linux
        assert addresses == ["127.0.0.1"], addresses
    assert "NO AUTHENTICATION" not in server.output()


def test_ct_from_the_command_line_opens_in_a_lung_window(page, screens):
    assert state(page, "ct_loaded") and "LIDC-IDRI-0001-crop (512 x 512 x 24)" in state(page, "ct_name")
    assert "this computer only" in page.locator("#bind-info").inner_text()
    time.sleep(1.0)  # the views' first frames
    screens(page, "1_open")
    # a lung window: the axial view shows black air and dark lungs beside a bright body wall
    from io import BytesIO

    from PIL import Image

    grey = np.asarray(Image.open(BytesIO(view_image(page, "Red").screenshot(type="png"))).convert("L"))
    assert (grey < 40).mean() > 0.2 and (grey > 150).mean() > 0.05 and grey.std() > 40


def test_a_broken_file_shows_an_error_and_keeps_the_ct(page, tmp_path, screens):
    broken = tmp_path / "broken.nrrd"
    broken.write_bytes(b"NRRD0004\ntype: what\ngarbage\n")
    before = state(page, "ct_name")
    page.set_input_files("input[type=file]:not([webkitdirectory])", str(broken))
    wait_state(page, "s('error')", timeout_s=60)
    error = page.locator("#error").inner_text()
    assert error.startswith("broken.nrrd: cannot read the image"), error
    assert state(page, "ct_name") == before and not state(page, "busy")
    screens(page, "error")


def _row(page, name: str) -> dict:
    return next(row for row in state(page, "nodules") if row["name"] == name)


def _roi(page, name: str) -> dict:
    return next(roi for roi in state(page, "rois") if roi["name"] == name)


def _download(page, tmp_path: Path, name: str, prefix: str) -> Path:
    with page.expect_download() as download:
        page.locator(".export-link", has_text=name).click()
    path = tmp_path / f"{prefix}-{name}"
    download.value.save_as(str(path))
    return path


def _labels(path: Path) -> tuple[np.ndarray, dict]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    names = {int(image.GetMetaData(f"Segment{i}_LabelValue")): image.GetMetaData(f"Segment{i}_Name")
             for i in range(100) if image.HasMetaDataKey(f"Segment{i}_Name")}
    return sitk.GetArrayFromImage(image), names


def test_open_auto_segment_edit_a_box_refine_export(page, dicom_crop, reference_centre,
                                                    tmp_path, screens, server):
    timings = {}
    # 1. open the CT in the page (upload of the DICOM series folder)
    start = time.monotonic()
    page.set_input_files("input[webkitdirectory]", str(dicom_crop))
    wait_state(page, "s('ct_name').startsWith('DICOM series (24 files)') && !s('busy')",
               timeout_s=120)
    timings["open"] = time.monotonic() - start
    assert not state(page, "error") and state(page, "nodules") == []

    # Cancel stops Auto-segment and writes nothing
    page.click("#auto-segment")
    wait_state(page, "s('busy') && s('job_progress') > 0", timeout_s=120)
    page.click("#cancel")
    wait_state(page, "!s('busy')", timeout_s=120)
    assert "cancelled" in state(page, "notice") and state(page, "nodules") == []

    # 2. Auto-segment, with progress, while the page stays responsive
    start = time.monotonic()
    page.click("#auto-segment")
    wait_state(page, "s('busy')", timeout_s=10)
    lags, shot = [], False
    while state(page, "busy"):
        ask = time.monotonic()
        page.evaluate("window.trame.trigger('nodulesam_view_xy', ['Red', [0, 0, 0]])")
        lags.append(time.monotonic() - ask)
        if not shot and (state(page, "job_progress") or 0) > 20:
            screens(page, "2_progress")
            shot = True
            assert page.locator("#job-progress").is_visible()
        assert time.monotonic() - start < JOB_TIMEOUT_S, "Auto-segment did not finish"
        time.sleep(0.5)
    timings["auto_segment"] = time.monotonic() - start
    assert not state(page, "error"), state(page, "error")
    assert max(lags) < 5.0, f"the server answered in up to {max(lags):.1f} s during the job"
    timings["max_lag"] = max(lags)

    # 3. the table lists the readers' nodule: a segmented row whose box holds its centre
    rows, rois = state(page, "nodules"), state(page, "rois")
    assert rows and page.locator("tr.nodule-row").count() == len(rows)

    def holds(roi):
        z0, z1, y0, y1, x0, x1 = roi["box_ijk"]
        z, y, x = reference_centre
        return z0 <= z < z1 and y0 <= y < y1 and x0 <= x < x1

    nodule = next(roi["name"] for roi in rois if holds(roi))
    row = _row(page, nodule)
    assert row["volume_mm3"] and row["volume_mm3"] > 100 and row["status"] == "refined"
    assert row["type"] and row["lung_rads"], row
    page.locator("tr.nodule-row", has_text=nodule).click()
    wait_state(page, f"s('selected') === {nodule!r}")
    time.sleep(1.0)
    screens(page, "3_segmented")
    # the row click centred the axial view on the box
    roi = _roi(page, nodule)
    xy = page.evaluate("(a) => window.trame.trigger('nodulesam_view_xy', a)", ["Red", roi["center_ras"]])
    assert abs(xy["offset_mm"]) < 2.0 and abs(xy["x"] - xy["width"] / 2) < 2

    # a second box: Add box, click the mirror image of the nodule (in the other lung), Refine
    page.click("#add-box")
    wait_state(page, "s('placing') === 'box'")
    from NoduleSAMLib.volume import read_ct

    from scipy.ndimage import uniform_filter

    ct = read_ct(dicom_crop)
    z0, z1, y0, y1, x0, x1 = roi["box_ijk"]
    z, width = (z0 + z1) // 2, ct.hu.shape[2]
    hu = ct.hu[z]
    # a vessel in the other lung: soft tissue amid air, nearest the nodule's mirror image
    vessel = (hu > -50) & (hu < 300) & (uniform_filter(hu, 9) < -500)
    columns = np.arange(width)
    side = columns < width // 2 if (x0 + x1) / 2 > width / 2 else columns >= width // 2
    ys, xs = np.nonzero(vessel & side[None, :])
    mirror = np.array([(y0 + y1) / 2, width - 1 - (x0 + x1) / 2])
    nearest = np.argmin(np.hypot(ys - mirror[0], xs - mirror[1]))
    vessel_ras = ct.zyx_to_ras([z, ys[nearest], xs[nearest]])
    page.mouse.click(*page_point(page, "Red", vessel_ras))
    wait_state(page, f"s('rois').length === {len(rois) + 1} && !s('placing')")
    added = state(page, "rois")[-1]["name"]
    assert _row(page, added)["status"].startswith("no segment")
    page.click("#refine")
    wait_state(page, "!s('busy') && s('notice').startsWith('Refine')", timeout_s=JOB_TIMEOUT_S)
    assert f"refined 1, unchanged {len(rois)}" in state(page, "notice"), state(page, "notice")
    assert _row(page, added)["status"] == "refined"

    # export: segmentation, report and, for a DICOM CT, DICOM SEG
    page.click("#export")
    wait_state(page, "!s('busy') && s('exports').length === 3", timeout_s=120)
    first = _download(page, tmp_path, "nodules.seg.nrrd", "first")

    # 4. drag the nodule box's +x face handle outward in the axial view, and Refine
    page.locator("tr.nodule-row", has_text=nodule).click()
    time.sleep(1.0)
    roi = _roi(page, nodule)
    x_axis = np.array(roi["axes_ras"][0])
    handle = np.array(roi["center_ras"]) + x_axis * roi["size_mm"][0] / 2
    outward = np.array(roi["center_ras"]) + x_axis * (roi["size_mm"][0] / 2 + 6.0)
    start_xy, end_xy = page_point(page, "Red", handle), page_point(page, "Red", outward)
    drag(page, start_xy, end_xy)
    wait_state(page, f"s('rois').find(r => r.name === {nodule!r}).size_mm[0] > "
                     f"{roi['size_mm'][0] + 2}", timeout_s=20)
    moved = _roi(page, nodule)
    assert moved["size_mm"][1:] == pytest.approx(roi["size_mm"][1:], abs=0.01)
    wait_state(page, f"s('nodules').find(r => r.name === {nodule!r}).status.startsWith('box edited')")
    screens(page, "4_box_edited")
    page.click("#refine")
    wait_state(page, "!s('busy') && s('notice').startsWith('Refine')", timeout_s=JOB_TIMEOUT_S)
    # 5. only the edited box was refined
    assert f"refined 1, unchanged {len(rois)}" in state(page, "notice"), state(page, "notice")
    statuses = {row["name"]: row["status"] for row in state(page, "nodules")}
    assert statuses[nodule] == "refined"
    assert all(status == "unchanged" for name, status in statuses.items() if name != nodule)

    # 6. export again and check the files
    page.click("#export")
    wait_state(page, "!s('busy') && s('exports').length === 3 && "
                     "s('exports')[0].url.includes('export-002')", timeout_s=120)
    second = _download(page, tmp_path, "nodules.seg.nrrd", "second")
    time.sleep(0.5)
    screens(page, "5_exported")
    before, names = _labels(first)
    after, names_after = _labels(second)
    assert names == names_after and after.shape == (24, 512, 512)
    label = {name: value for value, name in names.items()}
    assert not np.array_equal(before == label[nodule], after == label[nodule])
    for name, value in label.items():
        if name != nodule:
            assert np.array_equal(before == value, after == value), name
    folder = server.exports / "export-002"
    report = json.loads((folder / "nodules.json").read_text())
    volumes = {n["name"]: n["volume_mm3"] for n in report["nodules"]}
    assert volumes[nodule] == pytest.approx(_row(page, nodule)["volume_mm3"], rel=1e-3)
    import pydicom

    seg = pydicom.dcmread(folder / "nodules.seg.dcm")
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == len(names)

    # 7. Delete box: the vessel's box and its segment go, the nodule stays
    page.locator("tr.nodule-row", has_text=added).click()
    wait_state(page, f"s('selected') === {added!r}")
    page.click("#delete-box")
    wait_state(page, f"!s('busy') && !s('rois').some(r => r.name === {added!r})", timeout_s=60)
    assert f"Deleted '{added}' and its segment." in state(page, "notice"), state(page, "notice")
    names_now = [row["name"] for row in state(page, "nodules")]
    assert added not in names_now and nodule in names_now

    # 8. Click nodule on the same vessel point: the box the click proposes, refined alone
    page.click("#click-nodule")
    wait_state(page, "s('placing') === 'click'")
    page.mouse.click(*page_point(page, "Red", vessel_ras))
    wait_state(page, f"s('rois').length === {len(rois) + 1} && !s('placing')")
    clicked = state(page, "rois")[-1]
    z0, z1, y0, y1, x0, x1 = clicked["box_ijk"]
    assert z0 <= z < z1 and y0 <= ys[nearest] < y1 and x0 <= xs[nearest] < x1, clicked
    page.click("#refine")
    wait_state(page, "!s('busy') && s('notice').startsWith('Refine')", timeout_s=JOB_TIMEOUT_S)
    assert f"refined 1, unchanged {len(rois)}" in state(page, "notice"), state(page, "notice")
    assert _row(page, clicked["name"])["status"] == "refined"
    print(f"\nweb timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}, "
          f"server start {server.start_s:.1f} s")
