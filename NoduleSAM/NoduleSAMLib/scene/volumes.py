"""Geometry between MRML and the engine: a CT volume node <-> :class:`CTVolume` (same voxels,
same IJK->RAS), and an ROI node <-> a voxel box of the CT (through the CT's RAS->IJK over the
ROI's 8 corners in world coordinates, parent transforms and rotation honoured)."""
from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import NoduleSAMError
from ..geometry import apply_matrix, box3d_corners_ijk, box3d_from_corners_ijk
from ..volume import CTVolume, check_ct


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def array_to_matrix(array) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def ct_from_volume_node(volume_node) -> CTVolume:
    """The CT in a scalar volume node as the engine's :class:`CTVolume` (checked to be a CT).

    The geometry is the node's own IJK->RAS; a parent transform of the node is honoured where
    boxes are converted (:func:`box_from_roi`, :func:`add_roi_for_box`).
    """
    if volume_node is None:
        raise NoduleSAMError("select a CT volume first")
    if (not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode")
            or volume_node.GetImageData() is None):
        raise NoduleSAMError(f"'{volume_node.GetName()}' is not a CT image volume")
    image = volume_node.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        raise NoduleSAMError(f"'{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} "
                             "components per voxel; a CT has one (grey values in HU)")
    dims = image.GetDimensions()
    hu = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    hu = hu.reshape(dims[::-1]).astype(np.float32)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    volume = CTVolume(hu, matrix_to_array(matrix), source=volume_node.GetName())
    check_ct(volume)
    return volume


def add_volume_node(scene, volume: CTVolume, name: str = "CT"):
    """A scalar volume node holding ``volume`` (int16 when the HU are whole numbers)."""
    hu = volume.hu
    if np.all(hu == np.round(hu)) and hu.min() >= -32768 and hu.max() <= 32767:
        hu = hu.astype(np.int16)
    image = vtk.vtkImageData()
    image.SetDimensions(*hu.shape[::-1])
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(hu).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(array_to_matrix(volume.ijk_to_ras))
    node.SetAndObserveImageData(image)
    node.CreateDefaultDisplayNodes()
    return node


# ---------------------------------------------------------------------------------------------
# ROIs <-> voxel boxes
def _transform_between(source_node, target_node) -> vtk.vtkGeneralTransform:
    """Transform from ``source_node``'s frame to ``target_node``'s (None: world), linear or not."""
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(source_node, target_node, transform)
    return transform


def _volume_ras_to_ijk(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(matrix)
    return matrix_to_array(matrix)


def roi_corners_world(roi) -> np.ndarray:
    """The 8 corners of an ROI in world RAS (its rotation and parent transforms applied)."""
    bounds = [0.0] * 6
    roi.GetObjectBounds(bounds)
    corners_object = np.array([[x, y, z] for z in bounds[4:6] for y in bounds[2:4] for x in bounds[0:2]])
    corners_node = apply_matrix(matrix_to_array(roi.GetObjectToNodeMatrix()), corners_object)
    to_world = _transform_between(roi.GetParentTransformNode(), None)
    return np.array([to_world.TransformPoint(*p) for p in corners_node])


def box_from_roi(roi, volume_node) -> tuple[int, int, int, int, int, int]:
    """The half-open voxel box ``(z0, z1, y0, y1, x0, x1)`` of ``volume_node`` whose voxel centres
    lie inside the axis-aligned (in voxel space) hull of the ROI's 8 corners; not clipped."""
    if roi.GetNumberOfControlPoints() == 0:
        raise NoduleSAMError(f"'{roi.GetName()}' is not placed yet: click in a view to place it")
    to_volume = _transform_between(None, volume_node.GetParentTransformNode())
    corners_ras = np.array([to_volume.TransformPoint(*p) for p in roi_corners_world(roi)])
    return box3d_from_corners_ijk(apply_matrix(_volume_ras_to_ijk(volume_node), corners_ras))


def set_roi_to_box(roi, volume_node, box_ijk) -> None:
    """Make ``roi`` the outer boundary of a voxel box, aligned with the volume's voxel axes."""
    ijk_to_ras = np.linalg.inv(_volume_ras_to_ijk(volume_node))
    corners_ras = apply_matrix(ijk_to_ras, box3d_corners_ijk(box_ijk))
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = ijk_to_ras[:3, :3] / spacing
    object_to_node[:3, 3] = corners_ras.mean(axis=0)
    z0, z1, y0, y1, x0, x1 = box_ijk
    roi.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    roi.SetAndObserveObjectToNodeMatrix(array_to_matrix(object_to_node))
    roi.SetSize(*(np.array([x1 - x0, y1 - y0, z1 - z0]) * spacing))


def voxel_from_world(point_ras, volume_node) -> tuple[int, int, int]:
    """The voxel ``(z, y, x)`` of ``volume_node`` nearest a world RAS point (a fiducial's
    position, with its parent transforms applied by Slicer), through the volume's transforms."""
    to_volume = _transform_between(None, volume_node.GetParentTransformNode())
    ijk = apply_matrix(_volume_ras_to_ijk(volume_node), np.array(to_volume.TransformPoint(*point_ras)))
    return tuple(int(v) for v in np.round(ijk[::-1]))


def crop_volume(volume: CTVolume, box_ijk) -> CTVolume:
    """The sub-volume ``box_ijk`` (a view, no copy), its origin moved so that every voxel keeps
    its RAS position."""
    z0, z1, y0, y1, x0, x1 = box_ijk
    shift = np.eye(4)
    shift[:3, 3] = [x0, y0, z0]
    return CTVolume(volume.hu[z0:z1, y0:y1, x0:x1], volume.ijk_to_ras @ shift, volume.source)
