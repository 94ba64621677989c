"""LiteMedSAM's image encoder on torch, ONNX Runtime and OpenVINO, one crop and batched, side by side.

    python benchmarks/encoder_backends.py [--slices 10] [--repeats 3]
                                          [--out benchmarks/results/encoder_backends.json]

The crops are the slices of a real test-split LIDC VOI, windowed and resized as the engine does
(``BoxRefiner._embed``). For each backend: seconds per crop one at a time and in one batch of
``--slices`` crops, and how far its masks are from torch's: the SAM mask decoder is run on each
backend's embeddings with the consensus box + 2 px, and the Dice against torch's mask is
reported (backends must reach >= 0.99). ONNX Runtime and OpenVINO are optional
(``pip install onnxruntime openvino``); a missing one is reported as not installed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "NoduleSAM"))
sys.path.insert(0, str(REPO / "training"))


def crops(lidc_dir: Path, count: int):
    """``count`` slices (with their consensus boxes) of the largest of the first test VOIs."""
    import csv

    import cv2
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
    pixels = []
    for z in zs:
        window = np.clip((crop.extract(hu[z], -1024.0) + 1350.0) / 1500.0, 0, 1) * 255.0
        pixels.append(cv2.resize(window.astype(np.float32), (256, 256), interpolation=cv2.INTER_AREA))
    batch = np.repeat(np.stack(pixels)[:, None], 3, axis=1).astype(np.float32)
    return folder.name, batch, [crop.box_to_crop(b) for b in boxes], crop.size


def timed(run, inputs: np.ndarray, repeats: int) -> tuple[float, float, np.ndarray]:
    """Seconds per crop one at a time and in one batch (best of ``repeats``), and the output."""
    run(inputs[:1])  # warm up
    single, batched = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        out = np.concatenate([run(inputs[i:i + 1]) for i in range(len(inputs))])
        single.append((time.perf_counter() - start) / len(inputs))
        start = time.perf_counter()
        run(inputs)
        batched.append((time.perf_counter() - start) / len(inputs))
    return min(single), min(batched), out


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
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "encoder_backends.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sam = build_sam("litemedsam")
    case, batch, boxes, crop_size = crops(args.lidc_dir, args.slices)
    encoder = sam.image_encoder

    def preprocessed(x: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        return (tensor - sam.pixel_mean) / sam.pixel_std

    def run_torch(x):
        with torch.inference_mode():
            return encoder(preprocessed(x)).numpy()

    backends = {"torch fp32": run_torch}
    # TinyViT's reshapes trace with a fixed batch: one static model per batch size.
    folder = Path(tempfile.mkdtemp())
    onnx_paths = {}
    for n in sorted({1, len(batch)}):
        onnx_paths[n] = folder / f"encoder_{n}.onnx"
        with torch.inference_mode():
            torch.onnx.export(encoder, (preprocessed(batch[:n]),), str(onnx_paths[n]),
                              input_names=["x"], output_names=["embedding"], opset_version=17,
                              dynamo=False)
    notes = {}
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        sessions = {n: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for n, path in onnx_paths.items()}
        backends[f"ONNX Runtime {ort.__version__}"] = lambda x: sessions[len(x)].run(
            None, {"x": preprocessed(x).numpy()})[0]
    except ImportError:
        notes["ONNX Runtime"] = "not installed"
    try:
        import openvino as ov

        core = ov.Core()
        compiled = {n: core.compile_model(core.read_model(str(path)), "CPU",
                                          {"INFERENCE_NUM_THREADS": args.threads,
                                           "INFERENCE_PRECISION_HINT": "f32"})
                    for n, path in onnx_paths.items()}
        backends[f"OpenVINO {ov.__version__.split('-')[0]}"] = lambda x: compiled[len(x)](
            preprocessed(x).numpy())[0]
    except ImportError:
        notes["OpenVINO"] = "not installed"

    def masks(embeddings: np.ndarray) -> list[np.ndarray]:
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

    rows, reference = {}, None
    for name, run in backends.items():
        single, batched, embeddings = timed(run, batch, args.repeats)
        predicted = masks(embeddings)
        if reference is None:
            reference = (embeddings, predicted)
        dices = [2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1) for a, b in zip(predicted, reference[1])]
        rows[name] = {"s_per_crop": single, "s_per_crop_batched": batched,
                      "max_abs_embedding_diff": float(np.abs(embeddings - reference[0]).max()),
                      "min_mask_dice_vs_torch": float(min(dices))}
    result = {"case": case, "slices": len(batch), "threads": args.threads, "backends": rows, "notes": notes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{case}, {len(batch)} crops, {args.threads} threads")
    print("| backend | s per crop | s per crop, batch of %d | max abs embedding diff | min mask Dice vs torch |" % len(batch))
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['s_per_crop']:.3f} | {row['s_per_crop_batched']:.3f} | "
              f"{row['max_abs_embedding_diff']:.2e} | {row['min_mask_dice_vs_torch']:.4f} |")
    for name, note in notes.items():
        print(f"| {name} | {note} | | | |")


if __name__ == "__main__":
    main()
