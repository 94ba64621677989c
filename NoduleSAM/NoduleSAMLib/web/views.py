"""The four views of the page: trame-slicer's Slicer application (scene, slice and 3D views,
rendered off-screen and streamed as images) with what NoduleSAM shows in them: the CT in a lung
window, ROI boxes with handles, segment outlines in the slices and their surfaces in 3D. No
volume rendering: on a CPU one 3D frame of it takes seconds (``../shared/notes/stack.md``)."""
from __future__ import annotations

import os

import numpy as np
from trame.widgets import html
from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui, create_vertical_view_gutter_ui
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories

from ..outputs import LUNG_WINDOW_HU
from ..scene import matrix_to_array

LAYOUT = "Quad View"                      # coronal and sagittal | 3D and axial
SLICE_VIEWS = ("Red", "Green", "Yellow")  # axial, coronal, sagittal
THREE_D_VIEW = "ThreeD"


def _marker(view_id: str, view) -> None:
    """A hidden element naming the view, so a page test can find its image."""
    html.Div(id=f"marker-{view.get_singleton_tag()}", style="display: none;")


def _slice_view_ui(server, view_id, view):
    create_vertical_slice_view_gutter_ui(server, view_id, view)
    _marker(view_id, view)


def _three_d_view_ui(server, view_id, view):
    create_vertical_view_gutter_ui(server, view_id, view)
    _marker(view_id, view)


class Viewer:
    """The Slicer application of one page and its views."""

    def __init__(self, server):
        if not os.environ.get("DISPLAY"):  # render through EGL, without trying an X server first
            os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
        self.app = SlicerApp()
        register_rca_factories(self.app.view_manager, server, slice_view_ui_f=_slice_view_ui,
                               three_d_view_ui_f=_three_d_view_ui)
        self.layout = LayoutManager(self.app.scene, self.app.view_manager, server)
        self.layout.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout.set_layout(LAYOUT)

    @property
    def scene(self):
        return self.app.scene

    def view(self, name: str):
        view = self.app.view_manager.get_view(name)
        if view is None:
            raise KeyError(f"no view named {name}")
        return view

    def slice_views(self):
        return [self.view(name) for name in SLICE_VIEWS]

    def show_ct(self, volume_node) -> None:
        """The CT in every slice view's background, lung window, views fitted to it."""
        lo, hi = LUNG_WINDOW_HU
        display = volume_node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevel(hi - lo, (hi + lo) / 2)
        self.app.display_manager.show_volume_in_slice_background(volume_node)
        self.app.display_manager.show_volume_in_slice_foreground(None)
        self.reset_views()

    def reset_views(self) -> None:
        for view in self.app.view_manager.get_views():
            view.reset_view()

    @staticmethod
    def show_roi(roi) -> None:
        """Handles on (centre, faces, corners) so the box can be dragged in every view."""
        display = roi.GetDisplayNode()
        if display is not None:
            display.SetHandlesInteractive(True)

    def show_segmentation(self, segmentation_node) -> None:
        """Outlines and a light fill in the slices, closed surfaces in 3D."""
        segmentation_node.CreateClosedSurfaceRepresentation()
        display = segmentation_node.GetDisplayNode()
        if display is not None:
            display.SetVisibility3D(True)
            display.SetOpacity2DFill(0.25)

    def jump_to(self, point_ras) -> None:
        """Centre the three slice views on a point and aim the 3D view at it."""
        r, a, s = (float(v) for v in point_ras)
        for view in self.slice_views():
            view.get_view_node().JumpSliceByCentering(r, a, s)
        three_d = self.view(THREE_D_VIEW)
        camera = three_d.get_camera_node()
        if camera is not None:
            camera.SetFocalPoint(r, a, s)
            camera.ResetClippingRange()
        three_d.schedule_render()

    def fit_three_d(self) -> None:
        self.view(THREE_D_VIEW).reset_view()

    def view_xy(self, name: str, point_ras) -> dict:
        """Where a RAS point is drawn in a slice view: ``x``, ``y`` in render-window pixels
        (origin bottom left), the window's ``width`` and ``height``, and ``offset_mm``, the
        point's distance from the slice plane."""
        view = self.view(name)
        xy_to_ras = matrix_to_array(view.get_view_node().GetXYToRAS())
        x, y, z, _ = np.linalg.inv(xy_to_ras) @ np.array([*map(float, point_ras), 1.0])
        width, height = view.render_window().GetSize()
        normal = xy_to_ras[:3, 2]
        offset = float(np.dot(np.array(point_ras, float) - xy_to_ras[:3, 3], normal)
                       / np.linalg.norm(normal))
        return {"x": float(x), "y": float(y), "width": int(width), "height": int(height),
                "offset_mm": offset}
