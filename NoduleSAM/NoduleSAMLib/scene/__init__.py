"""MRML logic between the engine and a Slicer scene. Imports ``slicer`` and VTK, never Qt.

It runs inside Slicer and under the ``slicer-core`` wheel (real MRML, no GUI), so everything the
Slicer module does to the scene is tested headless. Split as SlicerNNUnet splits its logic:

- :mod:`.parameters`: the parameter table and the parameter node (:class:`Parameters`), stored
  exactly as Slicer's ``@parameterNodeWrapper`` stores it, so the GUI binds to it and a saved
  scene restores it;
- :mod:`.volumes`: CT volume node <-> :class:`CTVolume`, ROI <-> voxel box;
- :mod:`.rois`: nodule boxes (ROI nodes) and what the detector stored on them;
- :mod:`.segments`: one segment per ROI, tagged so hand edits are kept;
- :mod:`.tables`: the candidates and measurements tables;
- :mod:`.jobs`: long work split between a worker thread and the main thread;
- :mod:`.export`: the segments as the engine's ``Result``, for ``nodulesam segment``'s files;
- :mod:`.logic`: :class:`Logic`, the buttons' actions, and :func:`auto_segment` for scripts.

The install logic (``NoduleSAMLib/install.py``) is not here: it has to import before the
engine's dependencies are installed. Everything a front end or a test uses is re-exported here.
"""
from .. import fpr as fpr_mod
from .. import models
from ..errors import NoduleSAMError
from ..volume import CTVolume
from .export import result_from_scene
from .jobs import Cancelled, Job, check_same_ct
from .logic import (ADD, CHANGED, EDITED, KEEP, NEW, REPLACE, UNCHANGED, Logic, RefinePlan,
                    RefineSummary, auto_segment, parameters_for)
from .parameters import (MODULE_NAME, PARAMETERS, PARAMETERS_BY_NAME, ROI_ROLE,
                         SETTING_OF_PARAMETER, Parameter, Parameters, is_node,
                         settings_from_parameters)
from .rois import (ROI_CLICK_ATTRIBUTE, ROI_NAME_PREFIX, ROI_PRIOR_ATTRIBUTE, ROI_PROMPTS_ATTRIBUTE,
                   ROI_SCORE_ATTRIBUTE, ROI_SEGMENT_ATTRIBUTE, ROI_SOURCE_VOLUME_ROLE, add_roi,
                   add_roi_for_candidate, boxes_overlap, candidate_from_roi, next_roi_name,
                   roi_score)
from .segments import (SEGMENT_HASH_TAG, SEGMENT_INPUT_TAG, check_segmentation_frame,
                       ensure_segmentation, segment_edited, segment_of_roi, segment_tag,
                       segment_voxels, voxel_hash, write_segment)
from .tables import (CANDIDATE_COLUMNS, MEASUREMENT_COLUMNS, TABLE_ROW_NODES_ATTRIBUTE,
                     measure_segment, roi_of_table_row, update_candidate_table,
                     update_measurement_table)
from .volumes import (add_volume_node, array_to_matrix, box_from_roi, crop_volume,
                      ct_from_volume_node, matrix_to_array, roi_corners_world, set_roi_to_box,
                      voxel_from_world)

__all__ = [
    "ADD", "CANDIDATE_COLUMNS", "CHANGED", "EDITED", "KEEP", "MEASUREMENT_COLUMNS", "MODULE_NAME",
    "NEW", "PARAMETERS", "PARAMETERS_BY_NAME", "REPLACE", "ROI_CLICK_ATTRIBUTE",
    "ROI_NAME_PREFIX", "ROI_PRIOR_ATTRIBUTE", "ROI_PROMPTS_ATTRIBUTE", "ROI_ROLE",
    "ROI_SCORE_ATTRIBUTE", "ROI_SEGMENT_ATTRIBUTE", "ROI_SOURCE_VOLUME_ROLE", "SEGMENT_HASH_TAG",
    "SEGMENT_INPUT_TAG", "TABLE_ROW_NODES_ATTRIBUTE", "UNCHANGED", "CTVolume", "Cancelled", "Job",
    "Logic", "NoduleSAMError", "Parameter", "Parameters", "RefinePlan", "RefineSummary",
    "add_roi", "add_roi_for_candidate", "add_volume_node", "array_to_matrix", "auto_segment",
    "box_from_roi", "boxes_overlap", "candidate_from_roi", "check_same_ct",
    "check_segmentation_frame", "crop_volume", "ct_from_volume_node", "ensure_segmentation",
    "fpr_mod", "is_node", "matrix_to_array", "measure_segment", "models", "next_roi_name",
    "parameters_for", "result_from_scene", "roi_corners_world", "roi_of_table_row", "roi_score",
    "segment_edited", "segment_of_roi", "segment_tag", "segment_voxels", "set_roi_to_box", "update_candidate_table",
    "update_measurement_table", "voxel_from_world", "voxel_hash", "write_segment",
]
