"""One segment per ROI in a ``vtkMRMLSegmentationNode`` whose reference geometry is the CT.
Each segment NoduleSAM writes carries tags: a hash of its voxels (so a hand edit is noticed and
never silently overwritten) and a key of the inputs that produced it (so an unchanged ROI is not
refined again)."""
from __future__ import annotations

import hashlib

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import NoduleSAMError
from .parameters import Parameters
from .rois import ROI_SEGMENT_ATTRIBUTE
from .volumes import matrix_to_array

SEGMENT_HASH_TAG = "NoduleSAM.VoxelHash"   # hash of the voxels we wrote
SEGMENT_INPUT_TAG = "NoduleSAM.InputKey"   # what produced them (box, CT, refiner, settings)


def ensure_segmentation(params: Parameters):
    """The output segmentation node, created on first use in the CT's frame (reference geometry
    and parent transform). A segmentation the user chose is aligned only while it holds no
    segments, so their other segments never move; :func:`check_segmentation_frame` refuses one
    that cannot hold the CT's voxels."""
    node = params.outputSegmentation
    if node is None:
        node = params.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                              f"{params.inputVolume.GetName()} nodules")
        node.CreateDefaultDisplayNodes()
        params.outputSegmentation = node
    if node.GetSegmentation().GetNumberOfSegments() == 0:
        node.SetAndObserveTransformNodeID(params.inputVolume.GetTransformNodeID())
    if node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(params.inputVolume)
    return node


def check_segmentation_frame(params: Parameters) -> None:
    """Segments are written in the CT's voxel frame: the chosen segmentation, if it already
    holds segments, must sit under the CT's transform (or both under none)."""
    node, volume_node = params.outputSegmentation, params.inputVolume
    if (node is not None and node.GetSegmentation().GetNumberOfSegments()
            and node.GetTransformNodeID() != volume_node.GetTransformNodeID()):
        raise NoduleSAMError(
            f"'{node.GetName()}' is under a different transform than the CT "
            f"'{volume_node.GetName()}': choose a segmentation in the CT's frame, or none to "
            "create one")


def segment_tag(segment, tag: str) -> str | None:
    value = vtk.mutable("")
    return str(value) if segment.GetTag(tag, value) else None


def segment_voxels(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """The segment's voxels as flat indices into the CT's ``[z, y, x]`` array, sorted."""
    image = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if image is None or segment is None:
        return np.zeros(0, dtype=np.int64)
    reference = slicer.vtkOrientedImageData()
    dims = volume_node.GetImageData().GetDimensions()
    reference.SetExtent(0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    reference.SetImageToWorldMatrix(matrix)
    to_world = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(to_world)
    if not np.allclose(matrix_to_array(to_world), matrix_to_array(matrix), atol=1e-4):
        # The user changed the segmentation's geometry: look at it on the CT's grid.
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            image, reference, resampled, False, True)
        image = resampled
    extent = image.GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        return np.zeros(0, dtype=np.int64)
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    labels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)
    z, y, x = np.nonzero(labels == segment.GetLabelValue())
    z, y, x = z + extent[4], y + extent[2], x + extent[0]
    inside = (z >= 0) & (z < dims[2]) & (y >= 0) & (y < dims[1]) & (x >= 0) & (x < dims[0])
    return np.sort(np.ravel_multi_index((z[inside], y[inside], x[inside]), dims[::-1]))


def voxel_hash(flat_indices: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(flat_indices, dtype=np.int64).tobytes(),
                           digest_size=12).hexdigest()


def write_segment(segmentation_node, volume_node, segment_id: str | None, name: str, color,
                  box_ijk, mask: np.ndarray, input_key: str) -> str:
    """Write ``mask`` (bool, shaped like ``box_ijk``) as the whole of a segment; returns its ID.

    ``segment_id`` None (or no longer present) creates a segment. The segment is tagged with the
    hash of what was written and the key of the inputs that produced it.
    """
    segmentation = segmentation_node.GetSegmentation()
    if segment_id is None or segmentation.GetSegment(segment_id) is None:
        segment_id = segmentation.AddEmptySegment(
            segmentation.GenerateUniqueSegmentID(name.replace(" ", "_")), name, list(color))
    z0, z1, y0, y1, x0, x1 = box_ijk
    image = slicer.vtkOrientedImageData()
    image.SetExtent(x0, x1 - 1, y0, y1 - 1, z0, z1 - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    dims = volume_node.GetImageData().GetDimensions()
    whole = [0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1]  # clears what lay outside the box
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, segmentation_node, segment_id,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, whole):
        raise NoduleSAMError(f"could not write segment '{name}'")
    segment = segmentation.GetSegment(segment_id)
    segment.SetName(name)
    segment.SetColor(*color)
    segment.SetTag(SEGMENT_HASH_TAG, voxel_hash(segment_voxels(segmentation_node, segment_id,
                                                               volume_node)))
    segment.SetTag(SEGMENT_INPUT_TAG, input_key)
    return segment_id


def segment_of_roi(params: Parameters, roi) -> str | None:
    """The ID of the segment refined from ``roi``, if it still exists."""
    node, segment_id = params.outputSegmentation, roi.GetAttribute(ROI_SEGMENT_ATTRIBUTE)
    if node is None or not segment_id or node.GetSegmentation().GetSegment(segment_id) is None:
        return None
    return segment_id


def segment_edited(params: Parameters, segment_id: str) -> bool:
    """Whether the segment's voxels differ from what NoduleSAM last wrote (or it never wrote it)."""
    node = params.outputSegmentation
    written = segment_tag(node.GetSegmentation().GetSegment(segment_id), SEGMENT_HASH_TAG)
    return written != voxel_hash(segment_voxels(node, segment_id, params.inputVolume))
