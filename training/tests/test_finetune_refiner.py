"""finetune-refiner on real VOIs: cached embeddings, prompts, a real training run, the bundle."""
import numpy as np
import pytest
import torch

from lidc_data import LIDC_DIR, needs_voi
from nodulesam_train import finetune_refiner as ft

pytestmark = needs_voi


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Two `val` and two `train` VOIs embedded by the product's code (central slice, its loose
    crop, one neighbour each side)."""
    folder = tmp_path_factory.mktemp("embeddings")
    torch.set_num_threads(2)
    count = ft.cache_embeddings(LIDC_DIR / "voi", folder, limit=2, progress=False)
    assert count >= 4
    assert ft.cache_embeddings(LIDC_DIR / "voi", folder, limit=2, progress=False) == 0  # resumes
    return folder


@pytest.fixture(scope="module")
def sam():
    from NoduleSAMLib.models import build_sam

    return build_sam("litemedsam")


def test_cache_holds_the_products_crops_and_prompts(cache):
    val, train = ft.load_records(cache, "val"), ft.load_records(cache, "train")
    assert len(val) == 2 and all(r.central for r in val)  # val: central slices only
    assert len(train) > 2 and any(not r.central for r in train)
    for record in val + train:
        assert record.embedding.shape == (256, 64, 64) and record.embedding.dtype == np.float16
        assert record.mask.any() and record.mask.shape[0] == record.mask.shape[1] >= 44
        x0, y0, x1, y1 = record.box3d  # the 3D box holds the slice's consensus
        ys, xs = np.nonzero(record.mask)
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1


def test_training_forward_is_the_products_predict(cache, sam):
    """``mask_logits`` on a cached embedding gives SamPredictor's logits for the same box."""
    from segment_anything import SamPredictor

    record = ft.load_records(cache, "val")[0]
    box = ft.val_prompts(record)["gt box + 2 px"]
    predictor = SamPredictor(sam)
    size = len(record.mask)
    predictor.original_size, predictor.input_size = (size, size), (256, 256)
    predictor.features = torch.from_numpy(record.embedding.astype(np.float32))[None]
    predictor.is_image_set = True
    expected, _, _ = predictor.predict(box=box, multimask_output=False, return_logits=True)
    with torch.inference_mode():
        got = ft.mask_logits(sam, predictor.features[0], box, size).numpy()
    np.testing.assert_allclose(got, expected[0], atol=1e-4)


def test_prompts_are_valid_boxes_in_the_crop(cache):
    rng = np.random.default_rng(0)
    for record in ft.load_records(cache, "train"):
        for _ in range(50):
            x0, y0, x1, y1 = ft.sample_box(record, rng)
            assert 0 <= x0 < x1 <= len(record.mask) - 1 and 0 <= y0 < y1 <= len(record.mask) - 1


def test_a_few_steps_lower_the_loss_on_a_real_nodule(cache):
    from NoduleSAMLib.models import build_sam

    sam = build_sam("litemedsam")
    record = ft.load_records(cache, "train")[0]
    embedding = torch.from_numpy(record.embedding.astype(np.float32))
    target = torch.from_numpy(record.mask.astype(np.float32))
    box = ft.jittered(record.box3d, np.random.default_rng(1))  # a loose, shifted box
    params = list(sam.prompt_encoder.parameters()) + list(sam.mask_decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = ft.dice_bce(ft.mask_logits(sam, embedding, box, len(record.mask)), target)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in sam.image_encoder.parameters())


def test_train_and_package_give_a_verified_loadable_delta(cache, tmp_path):
    from NoduleSAMLib.models import build_sam, load_weights, sha256_file
    from NoduleSAMLib.refine import BoxRefiner

    history = ft.train(cache, tmp_path / "run", epochs=1, lr=1e-4, batch=2, progress=False)
    assert len(history["val"]) == 2 and history["best_epoch"] in (0, 1)
    assert all(0.0 <= v <= 1.0 for row in history["val"] for v in row.values())
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    sha = ft.package(state, tmp_path / "bundle", history, "nodulesam-train finetune-refiner ...")
    weights = tmp_path / "bundle" / ft.WEIGHTS_FILE
    assert sha == sha256_file(weights) and sha in (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    delta = load_weights(weights, sha)
    assert {k.split(".")[0] for k in delta} == set(ft.PARTS)
    assert all(v.dtype == torch.float16 for v in delta.values() if v.is_floating_point())
    assert weights.stat().st_size < 12e6  # no image encoder, no optimizer
    own = tmp_path / "my_delta.pt"  # a user's own file: not held to the pinned hash
    own.write_bytes(weights.read_bytes())
    model = build_sam("litemedsam-nodule", checkpoint=own)
    record = ft.load_records(cache, "val")[0]
    logits = ft.mask_logits(model, torch.from_numpy(record.embedding.astype(np.float32)),
                            ft.val_prompts(record)["gt box + 2 px"], len(record.mask))
    assert torch.isfinite(logits).all() and (logits > 0).any()
    assert isinstance(BoxRefiner(model).settings.window_hu, tuple)
