"""The bundled LiteMedSAM refiner on real LIDC nodules, and its embedding cache."""
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from NoduleSAMLib.boxes import PAD_PX, candidates_from_mask
from NoduleSAMLib.geometry import box2d_of_mask, expand_box2d
from NoduleSAMLib.refine import OUTSIDE_LOGIT, BoxRefiner


def dice(a, b):
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def test_cases(lidc_dir):
    """The first 12 test-split VOIs: HU crop and 50% consensus, ``[z, y, x]``."""
    cases = pd.read_csv(lidc_dir / "voi" / "cases.csv")
    ids = cases[cases.split == "test"].case_id.head(12)
    return [(cid, read(lidc_dir / "voi" / cid / "image.nii.gz").astype(np.float32),
             read(lidc_dir / "voi" / cid / "consensus50.nii.gz") > 0) for cid in ids]


def test_box_prompt_beats_filled_box_on_lidc_central_slices(sam, test_cases):
    refiner = BoxRefiner(sam)
    sam_dice, filled_dice = [], []
    for cid, hu, truth in test_cases:
        z = int(np.argmax(truth.sum(axis=(1, 2))))
        box = expand_box2d(box2d_of_mask(truth[z]), 0.0, PAD_PX, truth.shape[1:])
        mask = refiner.segment(hu[z], box, (cid, z))
        assert mask.shape == truth[z].shape and mask.dtype == bool
        filled = np.zeros_like(truth[z])
        x0, y0, x1, y1 = box.astype(int)
        filled[y0:y1 + 1, x0:x1 + 1] = True
        sam_dice.append(dice(mask, truth[z]))
        filled_dice.append(dice(filled, truth[z]))
    # measured 0.91 (SAM) vs 0.57 (filled box) on the first 30 test cases
    assert np.mean(sam_dice) > 0.8
    assert np.mean(sam_dice) > np.mean(filled_dice) + 0.15
    assert refiner.encoder_calls == len(test_cases)


def test_editing_a_box_inside_the_crop_reuses_the_embedding(sam, test_cases):
    refiner = BoxRefiner(sam)
    cid, hu, truth = test_cases[0]
    z = int(np.argmax(truth.sum(axis=(1, 2))))
    box = expand_box2d(box2d_of_mask(truth[z]), 0.0, PAD_PX, truth.shape[1:])
    first = refiner.segment(hu[z], box, (cid, z))
    nudged = refiner.segment(hu[z], box + [1, 1, 1, 1], (cid, z))
    assert refiner.encoder_calls == 1  # decoder only
    assert dice(first, nudged) > 0.8
    refiner.segment(hu[z], box + 400, (cid, z))  # far away: a new crop
    refiner.segment(hu[z - 1], box, (cid, z - 1))  # another slice
    assert refiner.encoder_calls == 3
    # logits are what segment thresholds; outside the crop (if the slice is larger) they say
    # "background" for sure
    logits = refiner.logits(hu[z], box, (cid, z))
    assert logits.shape == hu[z].shape and logits.dtype == np.float32
    assert ((logits > sam.mask_threshold) == first).all()
    assert logits.min() >= OUTSIDE_LOGIT and logits.max() > 0
    far = refiner.logits(hu[z], box + 400, (cid, z))  # crop mostly outside the slice
    assert far[: int(box[3]) + 1, : int(box[2]) + 1].max() == OUTSIDE_LOGIT


def test_refine_candidate_in_3d(sam, nodule_crop_0001):
    """A detector-style candidate from the reference mask: every slice gets a prompt."""
    volume, truth = nodule_crop_0001
    candidate = candidates_from_mask(truth, None, volume.spacing_zyx_mm)[0]
    z0, z1, y0, y1, x0, x1 = candidate.box_ijk
    mask = BoxRefiner(sam).refine(volume.hu, candidate, "crop-0001")
    assert mask.shape == (z1 - z0, y1 - y0, x1 - x0)
    assert dice(mask, truth[z0:z1, y0:y1, x0:x1]) > 0.8
    assert not truth[:z0].any() and not truth[z1:].any()


def test_in_distribution_detector_sam_vote_on_a_real_nodule(sam, bundled_detector, ct_0001, reference_0001):
    """The bundled detector on the whole of LIDC-IDRI-0001 (a scan it was trained on), then
    nodule 1 refined by the detector-SAM vote (the default) and by SAM alone. In-distribution:
    it checks the vote's mechanics on a real nodule, not the detector's accuracy."""
    from NoduleSAMLib.pipeline import Pipeline
    from NoduleSAMLib.refine import RefineSettings

    candidate = Pipeline(bundled_detector).detect(ct_0001)[0]
    z0, z1, y0, y1, x0, x1 = candidate.box_ijk
    reference = reference_0001[z0:z1, y0:y1, x0:x1] > 0
    assert (reference & candidate.detector_mask).any(), "Nodule 1 is the nodule"
    prior = candidate.prior()
    assert prior is not None and prior.shape == reference.shape

    refiner = BoxRefiner(sam)
    voted = refiner.refine(ct_0001.hu, candidate, "0001")
    alone_refiner = BoxRefiner(sam, RefineSettings(detector_weight=0.0))
    alone = alone_refiner.refine(ct_0001.hu, candidate, "0001")
    # SAM ran only on slices where it could change the vote (the box has 12 slices)
    assert 0 < refiner.encoder_calls < alone_refiner.encoder_calls == reference.shape[0]
    # the vote never paints where the detector is below (0.5 - 0.3) / 0.7
    assert not voted[prior < 0.2 / 0.7].any()
    # SAM alone spreads onto the slices above and below the nodule; the vote does not
    assert alone[0].any() and not voted[0].any()
    assert dice(voted, reference) > 0.85
    assert dice(voted, reference) > dice(alone, reference)
    # an edited box is the user's: SAM alone, from cached embeddings
    calls = alone_refiner.encoder_calls
    candidate.box_ijk = (z0, z1, y0 + 1, y1, x0, x1)
    assert candidate.prior() is None
    edited = alone_refiner.refine(ct_0001.hu, candidate, "0001")
    assert alone_refiner.encoder_calls == calls
    assert dice(edited, alone[:, 1:]) > 0.9


def test_the_detector_alone_decides_where_sam_cannot_change_the_vote(sam):
    refiner = BoxRefiner(sam)  # weight 0.7: SAM matters only where 2/7 < P <= 5/7
    sure = np.array([[0.0, 0.1, 0.28], [0.72, 0.9, 1.0]], np.float32)
    np.testing.assert_array_equal(refiner.decided_by_detector(sure), sure > 0.5)
    assert refiner.decided_by_detector(np.array([[0.1, 0.5]], np.float32)) is None
    # the shortcut agrees with the vote for any SAM answer
    for logits in (np.full(sure.shape, -50.0, np.float32), np.full(sure.shape, 50.0, np.float32)):
        np.testing.assert_array_equal(refiner.vote(logits, sure), refiner.decided_by_detector(sure))


def test_a_neighbouring_component_does_not_leak_into_a_nodule(sam):
    """Two detections 1 px apart (the juxtavascular case): each box holds a slice of the other,
    which the detector prior must not vote into it, and no voxel is measured twice."""
    from NoduleSAMLib.pipeline import Pipeline
    from NoduleSAMLib.volume import CTVolume

    rng = np.random.default_rng(0)
    hu = (rng.normal(-850, 20, (24, 64, 64))).astype(np.float32)
    first, second = np.zeros(hu.shape, bool), np.zeros(hu.shape, bool)
    first[6:17, 20:31, 15:26] = True
    second[6:17, 20:31, 27:38] = True  # column x = 26 between them is background
    hu[first | second] = 40.0
    probability = np.where(first | second, 0.95, 0.02).astype(np.float32)
    candidates = candidates_from_mask(first | second, probability, (1.0, 1.0, 1.0))
    assert len(candidates) == 2
    for candidate in candidates:  # each box reaches into the other cube ...
        z0, z1, y0, y1, x0, x1 = candidate.box_ijk
        own = candidate.detector_mask
        other = (first | second)[z0:z1, y0:y1, x0:x1] & ~own
        assert other.sum() > 100
        assert not candidate.prior()[other].any()  # ... but its prior is zero there
    volume = CTVolume.from_lps(hu, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    nodules = Pipeline(refiner=BoxRefiner(sam)).segment(volume, candidates)
    masks = []
    for nodule in nodules:
        full = np.zeros(hu.shape, bool)
        z0, z1, y0, y1, x0, x1 = nodule.candidate.box_ijk
        full[z0:z1, y0:y1, x0:x1] = nodule.mask
        masks.append(full)
        assert nodule.measurements["voxels"] == full.sum()
    assert not (masks[0] & masks[1]).any()
    for full in masks:  # each nodule is one cube, all of it, and none of the other
        cube = first if (full & first).sum() > (full & second).sum() else second
        assert not (full & (first | second) & ~cube).any()
        assert dice(full, cube) > 0.9
