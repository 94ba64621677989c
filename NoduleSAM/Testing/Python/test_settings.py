"""Settings have one home: the command line's defaults are settings.DEFAULTS."""
import json

import pytest

from NoduleSAMLib.cli import parser, settings_from_args
from NoduleSAMLib.errors import NoduleSAMError
from NoduleSAMLib.pipeline import Pipeline
from NoduleSAMLib.settings import DEFAULTS, CandidateSettings, Settings


def test_command_line_defaults_are_the_settings_defaults():
    args = parser().parse_args(["segment", "ct.nrrd", "-o", "out.seg.nrrd"])
    assert settings_from_args(args) == DEFAULTS
    args = parser().parse_args(["segment", "ct.nrrd", "-o", "out.seg.nrrd", "--min-in-lungs", "0",
                                "--no-blobs", "--crop-margin", "20", "--sensitivity", "specific"])
    settings = settings_from_args(args)
    assert settings == DEFAULTS.with_candidates(min_in_lungs=0.0, blobs=False,
                                                sensitivity="specific").with_refine(crop_margin_px=20)
    assert settings.key() != DEFAULTS.key()


def test_settings_round_trip_through_json_and_refuse_unknown_keys():
    changed = DEFAULTS.with_refine(window_hu=(-1000.0, 400.0)).with_candidates(pad_px=3.0)
    assert Settings.from_dict(json.loads(json.dumps(changed.to_dict()))) == changed
    data = DEFAULTS.to_dict()
    data["candidates"]["min_volume"] = 10  # a typo of min_volume_mm3
    with pytest.raises(NoduleSAMError, match="unknown CandidateSettings setting.*min_volume"):
        Settings.from_dict(data)


def test_pipeline_reads_candidate_settings():
    assert Pipeline().settings == CandidateSettings() == DEFAULTS.candidates
    assert Pipeline(min_in_lungs=0.0).settings.min_in_lungs == 0.0
    assert Pipeline(settings=CandidateSettings(pad_px=5.0), blobs=False).settings == \
        CandidateSettings(pad_px=5.0, blobs=False)
