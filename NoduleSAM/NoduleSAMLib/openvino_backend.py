"""OpenVINO on the CPU, shared by the refiner (``refine.py``), the candidate classifier
(``fpr.py``) and the detector (``detect.py``): which backend a user's choice means, and converted
models cached on disk."""
from __future__ import annotations

import os

from .errors import NoduleSAMError


def use_openvino(name: str, choices, on_cpu: bool, what: str) -> bool:
    """Whether backend ``name`` (one of ``choices``: ``auto``, ``torch``, ``openvino``, ...)
    runs on OpenVINO. ``auto`` takes it on a CPU where it is installed; ``openvino`` without it,
    or off the CPU, is a clear error. ``what`` names the part in messages (``encoder``)."""
    if name not in choices:
        raise NoduleSAMError(f"unknown {what} backend '{name}'; choose one of {', '.join(choices)}")
    if name == "torch" or (name == "auto" and not on_cpu):
        return False
    try:
        import openvino  # noqa: F401
    except ImportError:
        if name == "auto":
            return False
        raise NoduleSAMError(f"{what} 'openvino' needs OpenVINO: pip install openvino") from None
    if not on_cpu:
        raise NoduleSAMError(f"{what} 'openvino' runs on the CPU only: use --device cpu")
    return True


MIN_THREADS = 2


def cpu_threads(threads: int | None = None) -> int:
    """The thread count to compile for: ``threads`` or torch's, and never fewer than
    ``MIN_THREADS``. OpenVINO's CPU kernels give the same output for any 2 or more threads but a
    different one on 1 (about 2e-4 in the detector's logits), and a batch worker with one CPU
    must reproduce ``segment``."""
    import torch

    return max(MIN_THREADS, threads or torch.get_num_threads())


def cached_model(path, convert):
    """``(core, model)``: the OpenVINO model saved at ``path`` (an ``.xml``), else ``convert()``'s,
    saved there with fp32 weights. The ``.bin`` is written before the ``.xml``, so a reader never
    finds one without the other; an unwritable cache only costs the conversion next time."""
    import openvino as ov

    core = ov.Core()
    if path.is_file():
        return core, core.read_model(str(path))
    model = convert()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.xml")
        ov.save_model(model, str(partial), compress_to_fp16=False)
        partial.with_suffix(".bin").replace(path.with_suffix(".bin"))
        partial.replace(path)
    except OSError:
        pass
    return core, model


def weights_digest(*states) -> str:
    """A short hash of the tensors of state dicts: the cache key of a converted network."""
    import hashlib

    digest = hashlib.blake2b(digest_size=10)
    for state in states:
        for name, tensor in state.items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()
