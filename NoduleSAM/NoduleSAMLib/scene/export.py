"""The scene's nodules as the engine's :class:`Result`, so a front end writes the same
``.seg.nrrd``, JSON report and DICOM SEG as ``nodulesam segment`` (``outputs``, ``dicom_export``),
from the segments as they are now (hand edits included)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import NoduleSAMError
from ..measure import measure_nodule
from ..pipeline import Nodule, Result
from .parameters import Parameters
from .rois import candidate_from_roi
from .segments import segment_of_roi, segment_voxels
from .volumes import ct_from_volume_node


def result_from_scene(params: Parameters, source: str | None = None) -> Result:
    """One nodule per ROI that has a segment, in ROI order, labelled 1..n.

    A nodule's box is its ROI's, grown to hold every voxel of its segment; a voxel in two
    segments belongs to the first, as in ``Pipeline.segment``. Empty segments are left out with
    a message. source: where the CT was read from (a DICOM series folder is needed for DICOM
    SEG); default the volume node's name.
    """
    volume = ct_from_volume_node(params.inputVolume)
    if source is not None:
        volume = replace(volume, source=str(source))
    shape = volume.hu.shape
    claimed = np.zeros(shape, dtype=bool)
    nodules, messages = [], []
    for roi in params.rois:
        segment_id = segment_of_roi(params, roi)
        if segment_id is None:
            continue
        flat = segment_voxels(params.outputSegmentation, segment_id, params.inputVolume)
        if flat.size == 0:
            messages.append(f"'{roi.GetName()}': its segment is empty; left out")
            continue
        candidate, _ = candidate_from_roi(roi, params.inputVolume, shape)
        full = np.zeros(shape, dtype=bool)
        full.ravel()[flat] = True
        full &= ~claimed
        claimed |= full
        zyx = np.nonzero(full)
        if not zyx[0].size:
            messages.append(f"'{roi.GetName()}': its segment lies inside an earlier one; left out")
            continue
        z0, z1, y0, y1, x0, x1 = candidate.box_ijk
        box = (min(z0, int(zyx[0].min())), max(z1, int(zyx[0].max()) + 1),
               min(y0, int(zyx[1].min())), max(y1, int(zyx[1].max()) + 1),
               min(x0, int(zyx[2].min())), max(x1, int(zyx[2].max()) + 1))
        mask = full[box[0]:box[1], box[2]:box[3], box[4]:box[5]].copy()
        nodules.append(Nodule(replace(candidate, box_ijk=box), mask, measure_nodule(volume, full),
                              label=len(nodules) + 1))
    if not nodules:
        raise NoduleSAMError("there are no segmented nodules to export: press Auto-segment, or "
                             "add a box and press Refine")
    return Result(volume, nodules, messages=messages)
