"""LiteMedSAM's image encoder (and mask decoder) on torch, ONNX Runtime and OpenVINO, side by side.

    python benchmarks/encoder_backends.py [--slices 10] [--repeats 3] [--check-vois 5]
                                          [--calibration-vois 8]
                                          [--out benchmarks/results/encoder_backends.json]

The crops are the slices of a real test-split LIDC VOI, windowed and resized as the engine does
(``BoxRefiner._embed``). For each encoder backend: seconds per crop one at a time, in one batch
of ``--slices`` crops (one static batch model), and, for OpenVINO, as that many asynchronous
requests under ``PERFORMANCE_HINT`` THROUGHPUT; and how far its masks are from torch's: the SAM
mask decoder (torch) is run on each backend's embeddings with the consensus box + 2 px and the
Dice against torch's mask is reported (backends must reach >= 0.99), on that VOI and on every
consensus slice of ``--check-vois`` more `test` VOIs (``benchmarks/user_box.py``'s default set),
each on the crop the engine makes for its tight box.

Encoder variants: torch fp32, torch bf16 autocast, ONNX Runtime (if installed), OpenVINO with
``INFERENCE_PRECISION_HINT`` f32 and bf16, and OpenVINO INT8 (``nncf`` post-training
quantization, if installed), calibrated on central slices of ``--calibration-vois`` `train` VOIs
(never on `test`). The mask decoder (prompt encoder + mask decoder, one box): torch against
OpenVINO f32 and bf16, seconds per call and the largest logit difference.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "NoduleSAM"))
sys.path.insert(0, str(REPO / "training"))
sys.path.insert(0, str(REPO / "benchmarks"))


def window(hu2d: np.ndarray, crop) -> np.ndarray:
    """One crop as the engine feeds it to the encoder: (3, 256, 256) float32, 0-255."""
    import cv2

    pixels = np.clip((crop.extract(hu2d, -1024.0) + 1350.0) / 1500.0, 0, 1) * 255.0
    resized = cv2.resize(pixels.astype(np.float32), (256, 256), interpolation=cv2.INTER_AREA)
    return np.repeat(resized[None], 3, axis=0)


def crops(lidc_dir: Path, count: int):
    """``count`` slices (with their consensus boxes) of the first test VOI with that many slices."""
    import SimpleITK as sitk
    from NoduleSAMLib.geometry import Crop2D, box2d_of_mask, expand_box2d

    with open(lidc_dir / "voi" / "cases.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test" and int(r["shape_z"]) >= count]
    folder = lidc_dir / "voi" / sorted(rows, key=lambda r: r["case_id"])[0]["case_id"]
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "image.nii.gz"))).astype(np.float32)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "consensus50.nii.gz"))) > 0
    zs = [z for z in range(len(hu)) if truth[z].any()][:count]
    boxes = [expand_box2d(box2d_of_mask(truth[z]), 0.0, 2.0) for z in zs]
    union = np.r_[np.min(boxes, axis=0)[:2], np.max(boxes, axis=0)[2:]]
    crop = Crop2D.around_snapped(union, 10, 44, 4)
    batch = np.stack([window(hu[z], crop) for z in zs]).astype(np.float32)
    return folder.name, batch, [crop.box_to_crop(b) for b in boxes], crop.size


def voi_slices(voi_dir: Path, split: str, step: int, limit: int, offset: int = 0, central_only=False):
    """(case, crops, boxes in crop pixels, crop side) for VOIs of ``split``: every consensus slice
    (or the central one) on the crop the engine makes for the VOI's tight 3D box."""
    from NoduleSAMLib.geometry import Crop2D, box2d_of_mask, expand_box2d
    from NoduleSAMLib.settings import RefineSettings
    from user_box import tight_box, voi_cases

    s = RefineSettings()
    for name, hu, truth, _ in voi_cases(voi_dir, split, step, limit, offset):
        z0, z1, y0, y1, x0, x1 = tight_box(truth)  # the crop of BoxRefiner.crop_for
        crop = Crop2D.around_snapped([x0, y0, x1 - 1, y1 - 1], s.crop_margin_px, s.min_crop_px, s.crop_grid_px)
        zs = [z for z in range(len(hu)) if truth[z].any()]
        if central_only:
            zs = [zs[len(zs) // 2]]
        boxes = [crop.box_to_crop(expand_box2d(box2d_of_mask(truth[z]), 0.0, 2.0)) for z in zs]
        yield name, np.stack([window(hu[z], crop) for z in zs]).astype(np.float32), boxes, crop.size


def timed(run, inputs: np.ndarray, repeats: int, batched_run=None) -> tuple[float, float | None, np.ndarray]:
    """Seconds per crop one at a time and in one batch (best of ``repeats``), and the output."""
    run(inputs[:1])  # warm up
    batched_run = batched_run or run
    batched_run(inputs)
    single, batched = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        out = np.concatenate([run(inputs[i:i + 1]) for i in range(len(inputs))])
        single.append((time.perf_counter() - start) / len(inputs))
        start = time.perf_counter()
        batched_run(inputs)
        batched.append((time.perf_counter() - start) / len(inputs))
    return min(single), min(batched), out


def best_batched(run, inputs: np.ndarray, repeats: int) -> float:
    """Seconds per crop with all ``inputs`` in one call (best of ``repeats``, after a warm-up)."""
    run(inputs)
    best = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(inputs)
        best.append((time.perf_counter() - start) / len(inputs))
    return min(best)


def main() -> None:
    import torch
    from nodulesam_train.detector_data import default_lidc_dir
    from NoduleSAMLib.models import build_sam
    from segment_anything import SamPredictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lidc-dir", type=Path, default=Path(default_lidc_dir()))
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check-vois", type=int, default=5,
                        help="more test VOIs (all consensus slices) for the masks' agreement")
    parser.add_argument("--calibration-vois", type=int, default=8,
                        help="train VOIs whose central slices calibrate the INT8 encoder")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "encoder_backends.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)

    sam = build_sam("litemedsam")
    case, batch, boxes, crop_size = crops(args.lidc_dir, args.slices)
    encoder = sam.image_encoder

    def preprocessed(x: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        return (tensor - sam.pixel_mean) / sam.pixel_std

    def run_torch(x):
        with torch.inference_mode():
            return encoder(preprocessed(x)).numpy()

    def run_torch_bf16(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return encoder(preprocessed(x)).float().numpy()

    backends = {f"torch {torch.__version__.split('+')[0]} fp32": (run_torch, None, None),
                "torch bf16 autocast": (run_torch_bf16, None, None)}
    notes = {}
    # TinyViT's reshapes trace with a fixed batch: one static model per batch size.
    sizes = sorted({1, len(batch)})
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime as ort

        folder = Path(tempfile.mkdtemp())
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        sessions = {}
        for n in sizes:
            path = folder / f"encoder_{n}.onnx"
            with torch.inference_mode():
                torch.onnx.export(encoder, (preprocessed(batch[:n]),), str(path), input_names=["x"],
                                  output_names=["embedding"], opset_version=17, dynamo=False)
            sessions[n] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        run_ort = lambda x: sessions[len(x)].run(None, {"x": preprocessed(x).numpy()})[0]  # noqa: E731
        backends[f"ONNX Runtime {ort.__version__}"] = (run_ort, None, None)
    except ImportError:
        notes["ONNX Runtime"] = "not installed (onnx, onnxruntime)"
    int8_calibration = []
    try:
        import openvino as ov

        core = ov.Core()
        notes["OpenVINO CPU capabilities"] = " ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        models = {}
        for n in sizes:  # as refine.OpenVINOEncoder converts it
            with torch.inference_mode():
                models[n] = ov.convert_model(encoder, example_input=torch.zeros(n, 3, 256, 256))
        version = ov.__version__.split("-")[0]

        def compiled_set(model_by_size, precision):
            return {n: core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": args.threads,
                                                     "INFERENCE_PRECISION_HINT": precision})
                    for n, m in model_by_size.items()}

        def throughput(model, precision):
            """``len(x)`` crops as that many async requests on the single-crop model."""
            compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": args.threads,
                                                         "INFERENCE_PRECISION_HINT": precision,
                                                         "PERFORMANCE_HINT": "THROUGHPUT"})
            queue = ov.AsyncInferQueue(compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

            def run(x):
                out = [None] * len(x)
                queue.set_callback(lambda request, i: out.__setitem__(i, request.get_output_tensor(0).data.copy()))
                for i in range(len(x)):
                    queue.start_async(preprocessed(x[i:i + 1]).numpy(), i)
                queue.wait_all()
                return np.concatenate(out)
            return run, compiled.get_property("NUM_STREAMS")

        for precision in ("f32", "bf16"):
            compiled = compiled_set(models, precision)
            run = (lambda c: lambda x: c[len(x)](preprocessed(x).numpy())[0])(compiled)
            backends[f"OpenVINO {version} {precision}"] = (run, None, throughput(models[1], precision))
        try:
            import nncf

            calibration = []  # central slices of train VOIs, never test
            for name, x, _, _ in voi_slices(args.lidc_dir / "voi", "train", 7, args.calibration_vois,
                                            central_only=True):
                int8_calibration.append(name)
                calibration += [preprocessed(crop[None]).numpy() for crop in x]
            quantized = nncf.quantize(models[1], nncf.Dataset(calibration),
                                      model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
            for precision in ("f32", "bf16"):
                compiled = compiled_set({1: quantized}, precision)[1]
                run = (lambda c: lambda x: np.concatenate(
                    [c(preprocessed(x[i:i + 1]).numpy())[0] for i in range(len(x))]))(compiled)
                backends[f"OpenVINO {version} INT8 (nncf {nncf.__version__}), rest {precision}"] = (
                    run, "one at a time", throughput(quantized, precision))
        except ImportError:
            notes["OpenVINO INT8"] = "nncf not installed"
    except ImportError:
        notes["OpenVINO"] = "not installed"

    def masks(embeddings: np.ndarray, boxes, crop_size) -> list[np.ndarray]:
        out = []
        for embedding, box in zip(embeddings, boxes):
            predictor = SamPredictor(sam)
            predictor.features = torch.from_numpy(np.ascontiguousarray(embedding[None])).float()
            predictor.original_size = (crop_size, crop_size)
            predictor.input_size = (256, 256)
            predictor.is_image_set = True
            mask, _, _ = predictor.predict(box=box, multimask_output=False)
            out.append(mask[0])
        return out

    def dices(a_masks, b_masks):
        return [2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1) for a, b in zip(a_masks, b_masks)]

    rows, reference = {}, None
    for name, (run, batched_note, async_run) in backends.items():
        single, batched, embeddings = timed(run, batch, args.repeats)
        row = {"s_per_crop": single, "s_per_crop_batched": None if batched_note else batched}
        if async_run is not None:
            row["s_per_crop_throughput_async"] = best_batched(async_run[0], batch, args.repeats)
            row["throughput_streams"] = int(async_run[1])
        predicted = masks(embeddings, boxes, crop_size)
        if reference is None:
            reference = (embeddings, predicted)
        row["max_abs_embedding_diff"] = float(np.abs(embeddings - reference[0]).max())
        row["min_mask_dice_vs_torch"] = float(min(dices(predicted, reference[1])))
        rows[name] = row
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)

    # The masks' agreement on more VOIs: every consensus slice, one crop at a time.
    check = {}
    if args.check_vois:
        per_backend = {name: [] for name in backends}
        for name, x, vboxes, side in voi_slices(args.lidc_dir / "voi", "test", 7, args.check_vois):
            reference_masks = None
            for backend, (run, _, _) in backends.items():
                embeddings = np.concatenate([run(x[i:i + 1]) for i in range(len(x))])
                predicted = masks(embeddings, vboxes, side)
                if reference_masks is None:  # torch fp32, the first backend
                    reference_masks = predicted
                per_backend[backend] += dices(predicted, reference_masks)
            check.setdefault("cases", []).append({"case": name, "slices": len(x)})
            print(name, len(x), "slices", flush=True)
        check["slices"] = sum(c["slices"] for c in check["cases"])
        for backend, values in per_backend.items():
            rows[backend]["check_vois_min_mask_dice_vs_torch"] = float(min(values))
            rows[backend]["check_vois_mean_mask_dice_vs_torch"] = float(np.mean(values))

    # The mask decoder on one embedding and one box: torch against OpenVINO.
    decoder_rows = {}
    try:
        from NoduleSAMLib.refine import openvino_decoder_model, prompt_decoder

        embedding = torch.from_numpy(np.ascontiguousarray(reference[0][:1]))
        box = torch.tensor([[80.0, 90.0, 160.0, 170.0]])
        module = prompt_decoder(sam)
        with torch.inference_mode():
            expected = module(embedding, box).numpy()
        runs = {"torch fp32": lambda: module(embedding, box).numpy()}
        model = openvino_decoder_model(sam)
        for precision in ("f32", "bf16"):
            compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": args.threads,
                                                         "INFERENCE_PRECISION_HINT": precision})
            runs[f"OpenVINO {precision}"] = (lambda c: lambda: c([embedding.numpy(), box.numpy()])[0])(compiled)
        for name, call in runs.items():
            with torch.inference_mode():
                call()
                best = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    for _ in range(10):
                        out = np.asarray(call())
                    best.append((time.perf_counter() - start) / 10)
            decoder_rows[name] = {"s_per_call": min(best),
                                  "max_abs_logit_diff": float(np.abs(out - expected).max())}
            print("decoder", name, decoder_rows[name], flush=True)
    except ImportError as err:
        notes["decoder"] = f"not measured ({err})"

    result = {"case": case, "slices": len(batch), "threads": args.threads,
              "date_utc": started.isoformat(timespec="minutes"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "int8_calibration_train_vois": int8_calibration, "check_vois": check,
              "backends": rows, "decoder": decoder_rows, "notes": notes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\n{case}, {len(batch)} crops, {args.threads} threads, load {load_start} -> {os.getloadavg()}")
    print(f"| backend | s per crop | s per crop, batch of {len(batch)} | {len(batch)} async requests "
          f"(THROUGHPUT) | max abs embedding diff | min mask Dice vs torch | min (mean) on "
          f"{check.get('slices', 0)} slices of {args.check_vois} more VOIs |")
    print("|---|---|---|---|---|---|---|")
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    for name, row in rows.items():
        print(f"| {name} | {row['s_per_crop']:.3f} | {fmt(row['s_per_crop_batched'])} | "
              f"{fmt(row.get('s_per_crop_throughput_async'))} | {row['max_abs_embedding_diff']:.2e} | "
              f"{row['min_mask_dice_vs_torch']:.4f} | "
              f"{row.get('check_vois_min_mask_dice_vs_torch', float('nan')):.4f} "
              f"({row.get('check_vois_mean_mask_dice_vs_torch', float('nan')):.4f}) |")
    for name, note in notes.items():
        print(f"| {name} | {note} | | | | | |")
    if decoder_rows:
        print("\n| mask decoder (one box) | s per call | max abs logit diff |\n|---|---|---|")
        for name, row in decoder_rows.items():
            print(f"| {name} | {row['s_per_call']:.4f} | {row['max_abs_logit_diff']:.2e} |")


if __name__ == "__main__":
    main()
