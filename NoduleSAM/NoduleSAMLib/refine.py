"""Refine a candidate with a SAM-family box prompt on local crops, slice by slice.

Like ``SamPredictor``: the expensive step (a crop's image embedding) is separate from the cheap
one (box -> mask), and embeddings are cached, so editing a box within the same crop re-runs only
the prompt encoder and mask decoder.
"""
from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np
from scipy.special import expit

from .boxes import Candidate
from .errors import NoduleSAMError
from .geometry import Crop2D, box2d_of_mask, expand_box2d
from .openvino_backend import cached_model, use_openvino, weights_digest
from .prompts import cut_attachments, solid_seed
from .settings import ENCODERS, RefineSettings  # noqa: F401  (RefineSettings: re-exported)

AIR_HU = -1024.0
OUTSIDE_LOGIT = -100.0


def detector_sam_vote(prior: np.ndarray, logits: np.ndarray, detector_weight: float,
                      sam_threshold: float) -> np.ndarray:
    """``detector_weight x prior + (1 - detector_weight) x sigmoid(logits - sam_threshold) > 0.5``.

    prior: the detector's foreground probability; logits: SAM's mask logits (same shape)."""
    sam = expit(logits - sam_threshold)
    return detector_weight * prior + (1.0 - detector_weight) * sam > 0.5


class OpenVINOEncoder:
    """A SAM image encoder compiled by OpenVINO for the CPU (``pip install openvino``).

    precision: OpenVINO's ``INFERENCE_PRECISION_HINT``. ``f32`` gives torch's embeddings within
    1e-5 in less time (BENCHMARKS.md, ``benchmarks/encoder_backends.py``); ``bf16`` was faster
    still on a CPU with bf16 instructions but moved some masks by more than Dice 0.01, so the
    engine uses f32. The converted model is cached under ``models.cache_dir()/openvino``, keyed
    by a hash of the encoder's weights, OpenVINO's version and the precision."""

    def __init__(self, encoder, side: int, threads: int | None = None, precision: str = "f32"):
        import openvino as ov
        import torch

        from .models import cache_dir

        def convert():
            with torch.inference_mode():
                return ov.convert_model(encoder, example_input=torch.zeros(1, 3, side, side))

        version = ov.__version__.split("-")[0]
        self.path = cache_dir() / "openvino" / f"encoder-{side}-{weights_digest(encoder.state_dict())}-ov{version}-{precision}.xml"
        core, model = cached_model(self.path, convert)
        self.threads = threads or torch.get_num_threads()
        self.precision = precision
        self.core, self.model = core, model
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": self.threads,
                                                          "INFERENCE_PRECISION_HINT": precision})
        self._queue = None

    def __call__(self, tensor):
        import torch

        return torch.from_numpy(self.compiled(tensor.detach().cpu().numpy())[0].copy())

    def many(self, tensors) -> list:
        """The embeddings of several crops, as concurrent requests on OpenVINO's THROUGHPUT
        configuration (one stream per core; compiled on first use): a third less time per crop
        than one at a time on 2 busy cores (``benchmarks/encoder_backends.py``)."""
        import openvino as ov
        import torch

        if self._queue is None:
            compiled = self.core.compile_model(self.model, "CPU", {
                "INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": self.precision,
                "PERFORMANCE_HINT": "THROUGHPUT"})
            self._queue = ov.AsyncInferQueue(compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        out = [None] * len(tensors)

        def done(request, i):
            out[i] = torch.from_numpy(request.get_output_tensor(0).data.copy())

        self._queue.set_callback(done)
        for i, tensor in enumerate(tensors):
            self._queue.start_async(tensor.detach().cpu().numpy(), i)
        self._queue.wait_all()
        return out


def prompt_decoder(sam):
    """SAM's prompt encoder and mask decoder for one box as one module: (embedding (1, 256, 64,
    64), box (1, 4) in model-input pixels) -> low-resolution mask logits (1, 1, 64, 64), as
    ``SamPredictor.predict_torch`` computes them with ``multimask_output=False``."""
    import torch

    class PromptDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.prompt_encoder, self.mask_decoder = sam.prompt_encoder, sam.mask_decoder

        def forward(self, embedding, box):
            sparse, dense = self.prompt_encoder(points=None, boxes=box, masks=None)
            low, _ = self.mask_decoder(image_embeddings=embedding,
                                       image_pe=self.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse,
                                       dense_prompt_embeddings=dense, multimask_output=False)
            return low

    return PromptDecoder().eval()


def openvino_decoder_model(sam):
    """``prompt_decoder(sam)`` converted by OpenVINO (cached like the encoder's model)."""
    import openvino as ov
    import torch

    from .models import cache_dir

    module = prompt_decoder(sam)
    grid = sam.prompt_encoder.image_embedding_size

    def convert():
        with torch.inference_mode():
            return ov.convert_model(module, example_input=(
                torch.zeros(1, sam.prompt_encoder.embed_dim, *grid), torch.tensor([[8.0, 8.0, 40.0, 40.0]])))

    digest = weights_digest(sam.prompt_encoder.state_dict(), sam.mask_decoder.state_dict())
    path = cache_dir() / "openvino" / f"decoder-{digest}-ov{ov.__version__.split('-')[0]}-f32.xml"
    return cached_model(path, convert)[1]


class OpenVINODecoder:
    """``prompt_decoder`` compiled by OpenVINO in f32: the same logits as torch within 1e-4, several
    times faster per box on 2 busy cores (``benchmarks/encoder_backends.py``)."""

    def __init__(self, sam, threads: int | None = None):
        import openvino as ov
        import torch

        threads = threads or torch.get_num_threads()
        self.compiled = ov.Core().compile_model(openvino_decoder_model(sam), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})

    def __call__(self, embedding, box):
        import torch

        return torch.from_numpy(self.compiled([embedding.detach().cpu().numpy(), box.numpy()])[0].copy())


def image_encoder(sam, name: str):
    """The encoder backend ``name`` (``ENCODERS``) for ``sam``: None means torch's own.

    ``auto`` takes OpenVINO (f32) on a CPU where it is installed, else torch. OpenVINO's bf16
    and an INT8 quantization were faster but their masks fell below Dice 0.99 against torch's
    on some slices (BENCHMARKS.md, "Encoder backends"), so they are not offered."""
    if not use_openvino(name, ENCODERS, next(sam.parameters()).device.type == "cpu", "encoder"):
        return None
    return OpenVINOEncoder(sam.image_encoder, sam.image_encoder.img_size)


class BoxRefiner:
    """SAM box prompts on cached crop embeddings.

    sam: a ``segment_anything.modeling.Sam`` (see ``models.build_sam``).
    bf16: run the torch image encoder under bfloat16 autocast (for GPUs and CPUs with bf16
      instructions; on a CPU without them it was 20x slower, see BENCHMARKS.md).
    cache_size: how many crop embeddings to keep (each about 4 MB).
    encoder: the image encoder's backend, ``auto`` (OpenVINO on a CPU where installed),
      ``torch`` or ``openvino`` (``image_encoder``). With OpenVINO the prompt encoder and mask
      decoder run on OpenVINO too (``OpenVINODecoder``), and the slices a new box or a
      detected candidate will surely prompt are embedded together (``_prefetch``).
    decoder_cache_mb: how much of the decoder's output (logits per embedding and exact box) to
      keep, so that an edit re-runs the decoder only for the prompts that changed.
    """

    def __init__(self, sam, settings: RefineSettings | None = None, bf16: bool = False,
                 cache_size: int = 128, encoder: str = "torch", decoder_cache_mb: float = 256):
        self.sam = sam
        self.settings = settings or RefineSettings()
        self.bf16 = bf16
        self.cache_size = cache_size
        self.decoder_cache_mb = decoder_cache_mb
        self.device = next(sam.parameters()).device
        self.encoder = image_encoder(sam, encoder)
        if self.encoder is None:
            self.encoder_name, self.decoder = "torch", None
        else:
            self.encoder_name = "openvino"
            self.decoder = OpenVINODecoder(sam)
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self._decoded: OrderedDict[tuple, np.ndarray] = OrderedDict()  # (embedding key, box) -> logits
        self._decoded_bytes = 0
        self.encoder_calls = 0
        self.decoder_calls = 0  # decoder runs; a box answered from the decoder cache is not one

    def crop_for(self, box_xyxy) -> Crop2D:
        """The crop for a prompt or candidate box: a pure function of the box (never of what was
        refined before), so the same box always gives the same mask. Its side and corner are
        snapped to ``RefineSettings.crop_grid_px``, so moving or resizing a box by a few pixels
        keeps the crop and its cached embedding (an edit re-runs only the mask decoder)."""
        s = self.settings
        return Crop2D.around_snapped(box_xyxy, s.crop_margin_px, s.min_crop_px, s.crop_grid_px)

    def clear_cache(self) -> None:
        """Forget every embedding and decoded box (the next refinement starts cold)."""
        self._cache.clear()
        self._decoded.clear()
        self._decoded_bytes = 0

    def _key(self, image_key, crop: Crop2D) -> tuple:
        return (image_key, crop, tuple(self.settings.window_hu))  # the window changes the pixels

    def _predictor(self, image2d_hu: np.ndarray, crop: Crop2D, image_key):
        """The crop's embedding (a ``SamPredictor``), from the cache when this exact crop of this
        image was embedded before."""
        key = self._key(image_key, crop)
        predictor = self._cache.get(key)
        if predictor is None:
            predictor = self._cache[key] = self._embed(image2d_hu, crop)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return predictor

    def _prefetch(self, hu: np.ndarray, zs, crop: Crop2D, volume_key) -> None:
        """Embed the slices ``zs`` of ``hu`` on ``crop`` that are not cached, together
        (``OpenVINOEncoder.many``), before they are prompted one by one. Only with OpenVINO:
        torch was slower batched (BENCHMARKS.md)."""
        if self.encoder is None or not hasattr(self.encoder, "many"):
            return
        keys = {z: self._key((volume_key, z), crop) for z in zs}
        todo = [z for z in zs if keys[z] not in self._cache][:self.cache_size]
        if len(todo) < 2:
            return
        tensors = [self.sam.preprocess(self._pixels(hu[z], crop)) for z in todo]
        for z, features in zip(todo, self.encoder.many(tensors)):
            self._cache[keys[z]] = self._predictor_of(features, crop)
            self.encoder_calls += 1
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _pixels(self, image2d_hu: np.ndarray, crop: Crop2D):
        """The crop as the encoder's input before normalisation: (1, 3, side, side), 0-255."""
        import torch

        lo, hi = self.settings.window_hu
        pixels = np.clip((crop.extract(image2d_hu, AIR_HU) - lo) / (hi - lo), 0, 1) * 255.0
        side = self.sam.image_encoder.img_size
        # Area interpolation, as LiteMedSAM's own pre-processing (better than bilinear here).
        resized = cv2.resize(pixels.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
        tensor = torch.from_numpy(np.repeat(resized[None, None], 3, axis=1)).to(self.device)
        return tensor.contiguous(memory_format=torch.channels_last)

    def _predictor_of(self, features, crop: Crop2D):
        """A ``SamPredictor`` holding the embedding ``features`` of ``crop``: what
        ``set_torch_image`` leaves, with another backend's encoder."""
        from segment_anything import SamPredictor

        side = self.sam.image_encoder.img_size
        predictor = SamPredictor(self.sam)
        predictor.original_size, predictor.input_size = (crop.size, crop.size), (side, side)
        predictor.features = features.float()
        predictor.is_image_set = True
        return predictor

    def _embed(self, image2d_hu: np.ndarray, crop: Crop2D):
        import torch
        from segment_anything import SamPredictor

        tensor = self._pixels(image2d_hu, crop)
        if self.encoder is not None:
            predictor = self._predictor_of(self.encoder(self.sam.preprocess(tensor)), crop)
        else:
            predictor = SamPredictor(self.sam)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                predictor.set_torch_image(tensor, (crop.size, crop.size))
        predictor.features = predictor.features.float()
        self.encoder_calls += 1
        return predictor

    def logits(self, image2d_hu: np.ndarray, box_xyxy, image_key, crop: Crop2D | None = None) -> np.ndarray:
        """SAM's mask logits (float32, full slice size) for ``box_xyxy`` (slice pixels, inclusive).

        Outside the crop the logits are ``OUTSIDE_LOGIT`` (probability 0).
        image_key: identifies the slice's pixels (e.g. ``(volume fingerprint, z)``) for the cache.
        crop: the crop to embed (default: ``crop_for(box_xyxy)``).
        """
        crop = self.crop_for(box_xyxy) if crop is None else crop
        predictor = self._predictor(image2d_hu, crop, image_key)
        logits = self._decode(predictor, crop.box_to_crop(box_xyxy), self._key(image_key, crop))
        return crop.paste(logits, image2d_hu.shape, OUTSIDE_LOGIT)

    def _decode(self, predictor, box_in_crop: np.ndarray, key=None) -> np.ndarray:
        """The crop's logits (float32, read-only) for a box in crop pixels: what
        ``SamPredictor.predict`` gives (``multimask_output=False``). With the embedding's cache
        ``key``, kept for the next time this box is prompted on this embedding."""
        import torch

        memo_key = None if key is None else (key, tuple(float(v) for v in box_in_crop))
        logits = self._decoded.get(memo_key) if memo_key is not None else None
        if logits is not None:
            self._decoded.move_to_end(memo_key)
            return logits
        box = torch.as_tensor(predictor.transform.apply_boxes(np.asarray(box_in_crop, float),
                                                              predictor.original_size),
                              dtype=torch.float, device=self.device)[None, :]
        with torch.inference_mode():
            if self.decoder is None:
                _, _, low = predictor.predict_torch(None, None, boxes=box, multimask_output=False,
                                                    return_logits=True)
            else:
                low = self.decoder(predictor.features, box.reshape(1, 4))
            masks = self.sam.postprocess_masks(low, predictor.input_size, predictor.original_size)
        self.decoder_calls += 1
        logits = masks[0, 0].detach().cpu().numpy().astype(np.float32)
        logits.flags.writeable = False
        if memo_key is not None and self.decoder_cache_mb > 0:
            self._decoded[memo_key] = logits
            self._decoded_bytes += logits.nbytes
            while self._decoded_bytes > self.decoder_cache_mb * 2**20:
                self._decoded_bytes -= self._decoded.popitem(last=False)[1].nbytes
        return logits

    def segment(self, image2d_hu: np.ndarray, box_xyxy, image_key) -> np.ndarray:
        """The mask (bool, full slice size) SAM draws for ``box_xyxy`` (slice pixels, inclusive)."""
        return self.logits(image2d_hu, box_xyxy, image_key) > self.sam.mask_threshold

    def vote(self, logits: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
        """SAM's mask from its logits, or, given the detector's probability ``prior`` (same
        shape), the weighted vote of the two (``RefineSettings.detector_weight``)."""
        s = self.settings
        if prior is None or s.detector_weight <= 0:
            return logits > self.sam.mask_threshold
        return detector_sam_vote(prior, logits, s.detector_weight, s.sam_threshold)

    def decided_by_detector(self, prior: np.ndarray) -> np.ndarray | None:
        """The vote's mask when SAM cannot change it, else None.

        SAM's probability lies in (0, 1), so a pixel is in the vote's mask whatever SAM says when
        ``w x P > 0.5``, and out of it whatever SAM says when ``w x P + (1 - w) <= 0.5``. When
        every pixel of the slice is one or the other, SAM need not run (no encoder call)."""
        w = self.settings.detector_weight
        surely_in = w * prior > 0.5
        surely_out = w * prior + (1.0 - w) <= 0.5
        return surely_in if (surely_in | surely_out).all() else None

    def refine(self, hu: np.ndarray, candidate: Candidate, volume_key, on_slice=None,
               spacing_zyx_mm=None) -> np.ndarray:
        """The candidate's mask, bool, shaped like its 3D box (``hu[box]``).

        A detected candidate (with per-slice detector prompts) is refined from those prompts
        (``_refine_detected``); a box from outside (a user's box, an ROI, a click's proposed
        box) by ``_refine_box``. Every slice of a candidate is embedded on the same crop, a pure
        function of its 3D box (``crop_for``), so the same box always gives the same mask.
        on_slice: optional callable run after each slice; raising from it stops the work (Cancel).
        spacing_zyx_mm: the voxel spacing (mm); given, a box from outside loses what is thinner
          than half its mask's thickness (``prompts.cut_attachments``), and on slices thinner
          than ``RefineSettings.interpolate_below_mm`` a detected candidate's SAM logits are
          interpolated on every other slice. The engine always gives it.
        """
        on_slice = on_slice or (lambda: None)
        if candidate.prompt_boxes():
            return self._refine_detected(hu, candidate, volume_key, on_slice, spacing_zyx_mm)
        return self._refine_box(hu, candidate.box_ijk, volume_key, on_slice, spacing_zyx_mm)

    def _refine_box(self, hu: np.ndarray, box_ijk, volume_key, on_slice, spacing_zyx_mm=None) -> np.ndarray:
        """A box from outside: the majority of three estimates on each slice of the box.

        1. the dense core ``prompts.solid_seed`` (HU above ``seed_hu``, the component nearest the
           box centre);
        2. SAM prompted on each slice with the core's box on that slice + ``box_pad_px``;
        3. SAM propagated from the box's central slice: prompted there with the box itself, then
           re-prompted with its own mask's box (``start_iterations`` times), then on each next
           slice with the previous slice's mask box + ``box_pad_px`` (and once more with its
           own); it stops where the mask vanishes, overlaps the previous one by less than
           ``min_overlap`` or averages below ``min_mean_hu``.
        Measured against the old propagation alone on 20 LIDC test VOIs (BENCHMARKS.md,
        ``benchmarks/user_box.py``): tight box 3D Dice 0.80 against 0.55. With the spacing, the
        majority then loses what is thinner than half its thickest point (``prompts.cut_attachments``):
        a loose box's vessels (+ 25 % box on 20 `val` VOIs: 0.772 -> 0.796, tight boxes unchanged).
        """
        s = self.settings
        z0, z1, y0, y1, x0, x1 = box_ijk
        offset = np.array([x0, y0, x0, y0], dtype=float)
        crop = self.crop_for([x0, y0, x1 - 1, y1 - 1])
        sub = hu[z0:z1, y0:y1, x0:x1]

        def sam(dz, box_in_slice):
            z = z0 + dz
            return self.logits(hu[z], box_in_slice, (volume_key, z), crop)[y0:y1, x0:x1] > self.sam.mask_threshold

        def padded(mask2d):
            return expand_box2d(box2d_of_mask(mask2d), 0.0, s.box_pad_px) + offset

        def settled(dz, box_in_slice, iterations):
            mask = sam(dz, box_in_slice)
            for _ in range(iterations):
                if not mask.any():
                    break
                again = sam(dz, padded(mask))
                if (again == mask).all():
                    break
                mask = again
            return mask

        seed = solid_seed(sub, s.seed_hu)
        centre = (len(sub) - 1) // 2
        # the slices prompted whatever SAM answers: the dense core's and the centre
        known = sorted(set(np.flatnonzero(seed.any(axis=(1, 2))).tolist()) | {centre})
        self._prefetch(hu, [z0 + dz for dz in known], crop, volume_key)
        from_seed = np.zeros_like(seed)
        for dz in np.flatnonzero(seed.any(axis=(1, 2))):
            from_seed[dz] = sam(dz, padded(seed[dz]))
            on_slice()
        propagated = np.zeros_like(seed)
        propagated[centre] = settled(centre, np.array([x0, y0, x1 - 1, y1 - 1], float), s.start_iterations)
        on_slice()
        for step in (1, -1):
            dz = centre + step
            while 0 <= dz < len(sub) and propagated[dz - step].any():
                previous = propagated[dz - step]
                mask = settled(dz, padded(previous), 1)
                area = mask.sum()
                if (area == 0 or (mask & previous).sum() < s.min_overlap * area
                        or sub[dz][mask].mean() < s.min_mean_hu):
                    break
                propagated[dz] = mask
                on_slice()
                dz += step
        majority = seed.astype(np.uint8) + from_seed + propagated >= 2
        return majority if spacing_zyx_mm is None else cut_attachments(majority, spacing_zyx_mm)

    def _refine_detected(self, hu: np.ndarray, candidate: Candidate, volume_key, on_slice,
                         spacing_zyx_mm=None) -> np.ndarray:
        """A detected candidate: slices with a detector prompt use it; other slices in the box
        take their prompt from the neighbouring slice's refined mask. A candidate that still has
        its detector probability (``Candidate.prior()``) gets the detector-SAM vote on every
        slice (``vote``), and SAM runs only on slices where it can change the vote
        (``decided_by_detector``). On thin slices (``spacing_zyx_mm[0]`` below
        ``RefineSettings.interpolate_below_mm``) such a candidate's every other prompted slice
        between two prompted neighbours votes with the mean of their SAM logits instead of an
        encoder run of its own (its own detector probability still votes). Candidates without a
        detector probability (blobs) are not interpolated: SAM alone lost up to 0.2 Dice there."""
        s = self.settings
        prior = candidate.prior() if s.detector_weight > 0 else None
        z0, z1, y0, y1, x0, x1 = candidate.box_ijk
        crop = self.crop_for([x0, y0, x1 - 1, y1 - 1])
        sam_logits: dict[int, np.ndarray] = {}

        def decided(z):
            return None if prior is None else self.decided_by_detector(prior[z - z0])

        def from_logits(z, logits):
            return self.vote(logits, None if prior is None else prior[z - z0])

        def mask_on(z, box):
            sure = decided(z)
            if sure is not None:
                return sure
            logits = sam_logits[z] = self.logits(hu[z], box, (volume_key, z), crop)[y0:y1, x0:x1]
            return from_logits(z, logits)

        prompts = candidate.prompt_boxes()
        first = min(prompts)
        between = set()
        if (prior is not None and spacing_zyx_mm is not None
                and float(spacing_zyx_mm[0]) < s.interpolate_below_mm):
            between = {z for z in prompts if (z - first) % 2 == 1 and z - 1 in prompts and z + 1 in prompts}
        # the slices whose detector prompt SAM will surely answer, embedded together
        self._prefetch(hu, [z for z in sorted(prompts) if z not in between and decided(z) is None],
                       crop, volume_key)
        masks: dict[int, np.ndarray] = {}
        for z, box in sorted(prompts.items()):
            if z not in between:
                masks[z] = mask_on(z, box)
                on_slice()
        for z in sorted(between):
            sure = decided(z)
            if sure is not None:
                masks[z] = sure
            elif z - 1 in sam_logits and z + 1 in sam_logits:
                masks[z] = from_logits(z, (sam_logits[z - 1] + sam_logits[z + 1]) / 2)
            else:  # a neighbour was decided without SAM: nothing to interpolate
                masks[z] = mask_on(z, prompts[z])
                on_slice()
        for order in (range(min(prompts) + 1, z1), range(max(prompts) - 1, z0 - 1, -1)):
            step = 1 if order.step > 0 else -1
            for z in order:
                if z in masks:
                    continue
                previous = masks.get(z - step)
                if previous is None or not previous.any():
                    continue  # nothing to propagate from; a later detector prompt may resume
                box = expand_box2d(box2d_of_mask(previous), 0.0, s.propagation_pad_px) + [x0, y0, x0, y0]
                mask = mask_on(z, box)
                area = mask.sum()
                keep = (area > 0 and (mask & previous).sum() >= s.min_overlap * area
                        and hu[z, y0:y1, x0:x1][mask].mean() >= s.min_mean_hu)
                masks[z] = mask if keep else np.zeros_like(mask)
                on_slice()
        out = np.zeros((z1 - z0, y1 - y0, x1 - x0), dtype=bool)
        for z, mask in masks.items():
            out[z - z0] = mask
        return out
