"""The refiner's backends agree on real LIDC slices with the bundled LiteMedSAM weights: the
OpenVINO image encoder against torch's (masks Dice >= 0.99), slices embedded together against one
by one, OpenVINO's prompt encoder and mask decoder against torch's, and the decoder cache (an
edit re-runs only the prompts that changed and gives what a fresh refiner gives)."""
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from NoduleSAMLib.boxes import Candidate
from NoduleSAMLib.errors import NoduleSAMError
from NoduleSAMLib.geometry import box2d_of_mask, expand_box2d
from NoduleSAMLib.refine import BoxRefiner


def dice(a, b):
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def tight(mask):
    zs, ys, xs = np.nonzero(mask)
    return (zs.min(), zs.max() + 1, ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)


@pytest.fixture(scope="module")
def vois(lidc_dir):
    """Two test-split VOIs of ``benchmarks/user_box.py``'s set (every 7th case id)."""
    cases = pd.read_csv(lidc_dir / "voi" / "cases.csv")
    ids = sorted(cases[cases.split == "test"].case_id)[0:14:7]
    return {cid: (read(lidc_dir / "voi" / cid / "image.nii.gz").astype(np.float32),
                  read(lidc_dir / "voi" / cid / "consensus50.nii.gz") > 0) for cid in ids}


def slice_masks(refiner, vois):
    """Every consensus slice of each VOI, on its tight box's crop, prompted with the slice's
    consensus box + 2 px: (mask, logits) per slice."""
    out = []
    for cid, (hu, truth) in vois.items():
        z0, z1, y0, y1, x0, x1 = tight(truth)
        crop = refiner.crop_for([x0, y0, x1 - 1, y1 - 1])
        for z in range(z0, z1):
            if truth[z].any():
                box = expand_box2d(box2d_of_mask(truth[z]), 0.0, 2.0)
                logits = refiner.logits(hu[z], box, (cid, z), crop)
                out.append((logits > 0, logits))
    return out


@pytest.fixture(scope="module")
def torch_masks(sam, vois):
    return slice_masks(BoxRefiner(sam, encoder="torch"), vois)


def test_the_openvino_backend_gives_torchs_masks(sam, vois, torch_masks):
    pytest.importorskip("openvino", reason="the optional OpenVINO backend is not installed")
    refiner = BoxRefiner(sam, encoder="openvino")
    assert refiner.encoder_name == "openvino" and refiner.encoder.path.name.endswith("-f32.xml")
    ours = slice_masks(refiner, vois)
    assert len(ours) == len(torch_masks) >= 10
    dices = [dice(a, b) for (a, _), (b, _) in zip(ours, torch_masks)]
    # measured on 5 test VOIs, 39 slices (benchmarks/encoder_backends.py): all 1.000
    assert min(dices) >= 0.99, dices
    worst = max(float(np.abs(a - b)[a > -50].max()) for (_, a), (_, b) in zip(ours, torch_masks))
    assert worst < 1e-2  # the same logits, to float rounding


def test_slices_embedded_together_are_those_embedded_one_by_one(sam, vois):
    pytest.importorskip("openvino", reason="the optional OpenVINO backend is not installed")
    hu, truth = vois[next(iter(vois))]
    z0, z1, y0, y1, x0, x1 = tight(truth)
    refiner = BoxRefiner(sam, encoder="openvino")
    crop = refiner.crop_for([x0, y0, x1 - 1, y1 - 1])
    refiner._prefetch(hu, list(range(z0, z1)), crop, "v")
    assert refiner.encoder_calls == z1 - z0 and len(refiner._cache) == z1 - z0
    for z in range(z0, z1):
        together = refiner._predictor(hu[z], crop, ("v", z)).features
        alone = refiner._embed(hu[z], crop).features
        assert float((together - alone).abs().max()) < 1e-5
    assert refiner.encoder_calls == 2 * (z1 - z0)  # the cached ones were not embedded again
    with pytest.raises(NoduleSAMError, match="unknown encoder"):
        BoxRefiner(sam, encoder="openvino-int8")


def test_openvino_decoder_gives_torchs_logits(sam, vois):
    pytest.importorskip("openvino", reason="the optional OpenVINO backend is not installed")
    hu, truth = vois[next(iter(vois))]
    z0, z1, y0, y1, x0, x1 = tight(truth)
    ov_refiner, torch_refiner = BoxRefiner(sam, encoder="openvino"), BoxRefiner(sam)
    crop = torch_refiner.crop_for([x0, y0, x1 - 1, y1 - 1])
    predictor = torch_refiner._embed(hu[(z0 + z1) // 2], crop)
    for box in ([x0, y0, x1 - 1, y1 - 1], [x0 - 3, y0 + 1, x1 + 2, y1 + 4]):
        box = crop.box_to_crop(box)
        ours, theirs = ov_refiner._decode(predictor, box), torch_refiner._decode(predictor, box)
        assert torch_refiner._decoded == {}  # no cache key, no caching
        assert ours.shape == theirs.shape == (crop.size, crop.size)
        assert float(np.abs(ours - theirs).max()) < 1e-2
        assert dice(ours > 0, theirs > 0) >= 0.999


def test_an_edit_reruns_only_the_prompts_that_changed(sam, vois):
    hu, truth = vois[next(iter(vois))]
    box = tuple(int(v) for v in tight(truth))
    moved = box[:4] + (box[4] + 1, box[5] + 1)
    refiner = BoxRefiner(sam)
    assert refiner.crop_for([moved[4], moved[2], moved[5] - 1, moved[3] - 1]) == \
        refiner.crop_for([box[4], box[2], box[5] - 1, box[3] - 1])
    first = refiner.refine(hu, Candidate("n", box, source="given box"), "v")
    encoder_calls, decoder_calls = refiner.encoder_calls, refiner.decoder_calls
    assert decoder_calls > encoder_calls > 0
    again = refiner.refine(hu, Candidate("n", box, source="given box"), "v")
    assert np.array_equal(first, again)
    assert (refiner.encoder_calls, refiner.decoder_calls) == (encoder_calls, decoder_calls)
    edited = refiner.refine(hu, Candidate("n", moved, source="given box"), "v")
    assert refiner.encoder_calls == encoder_calls
    assert refiner.decoder_calls - decoder_calls < decoder_calls / 2  # most prompts are unchanged
    fresh = BoxRefiner(sam).refine(hu, Candidate("n", moved, source="given box"), "v")
    assert np.array_equal(edited, fresh)  # the same box gives the same mask, whatever came before
