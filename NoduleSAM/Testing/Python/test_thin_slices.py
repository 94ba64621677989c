"""On thin slices a detected nodule's every other prompted slice votes with its neighbours' mean
SAM logits (``RefineSettings.interpolate_below_mm``): about half the encoder runs, nearly the same
mask. On LIDC-IDRI-0314 (1 mm slices, held out from every model) around its 22 mm nodule."""
from __future__ import annotations

import numpy as np
import pytest


def dice(a, b):
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def nodule_0314(lidc_dir):
    import SimpleITK as sitk

    from NoduleSAMLib.volume import CTVolume, read_ct

    path = lidc_dir / "scans" / "LIDC-IDRI-0314" / "ct.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found: the thin-slice check needs LIDC-IDRI-0314")
    ct = read_ct(path)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(lidc_dir / "scans" / "LIDC-IDRI-0314.consensus50.nii.gz")))
    centre = np.argwhere(labels > 0).mean(axis=0).round().astype(int)
    z0, y0, x0 = np.maximum(centre - [24, 64, 64], 0)
    region = np.s_[z0:z0 + 48, y0:y0 + 128, x0:x0 + 128]
    origin = ct.ijk_to_lps[:3, :3] @ np.array([x0, y0, z0]) + ct.ijk_to_lps[:3, 3]
    crop = CTVolume.from_lps(ct.hu[region], ct.spacing_ijk_mm, origin, ct.direction_lps, "0314 crop")
    return crop, labels[region] > 0


def test_interpolated_logits_halve_the_encoder_runs_on_a_thin_slice_nodule(sam, bundled_detector, nodule_0314):
    from NoduleSAMLib.pipeline import Pipeline
    from NoduleSAMLib.refine import BoxRefiner, RefineSettings

    volume, truth = nodule_0314
    assert volume.spacing_zyx_mm[0] < RefineSettings().interpolate_below_mm  # on by default here
    candidates = Pipeline(bundled_detector).detect(volume)
    hits = [c for c in candidates if truth[c.box_ijk[0]:c.box_ijk[1], c.box_ijk[2]:c.box_ijk[3],
                                           c.box_ijk[4]:c.box_ijk[5]][c.detector_mask].any()]
    assert hits, "the detector finds the nodule"
    candidate = hits[0]
    assert candidate.prior() is not None
    z0, z1, y0, y1, x0, x1 = candidate.box_ijk
    reference = truth[z0:z1, y0:y1, x0:x1]
    masks, calls = {}, {}
    for name, below_mm in (("interpolated", RefineSettings().interpolate_below_mm), ("every slice", 0.0)):
        refiner = BoxRefiner(sam, RefineSettings(interpolate_below_mm=below_mm), encoder="auto")
        masks[name] = refiner.refine(volume.hu, candidate, "0314", spacing_zyx_mm=volume.spacing_zyx_mm)
        calls[name] = refiner.encoder_calls
    assert calls["interpolated"] <= 0.65 * calls["every slice"]
    assert dice(masks["interpolated"], masks["every slice"]) > 0.97
    assert dice(masks["interpolated"], reference) > dice(masks["every slice"], reference) - 0.02
    assert dice(masks["interpolated"], reference) > 0.8
    # without the spacing nothing is interpolated: the every-slice mask, from its cache
    assert (refiner.refine(volume.hu, candidate, "0314") == masks["every slice"]).all()
    assert refiner.encoder_calls == calls["every slice"]
