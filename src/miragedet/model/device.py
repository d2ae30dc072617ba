"""Where a command computes: ``auto`` (a CUDA GPU when one is present, else the CPU) or a device
named, with TF32 for fp32 matrix products on GPUs that have it.

TF32 (NVIDIA Ampere and later, compute capability >= 8.0) runs fp32 matrix products on the
tensor cores with a 10-bit mantissa; PyTorch leaves it off for matmuls by default and turns it on
with ``torch.backends.cuda.matmul.allow_tf32`` (PyTorch's "TensorFloat-32 (TF32) on Ampere (and
later) devices" note, docs/notes/cuda). Our scores are probabilities of a softmax over two
cosine similarities; the fp32-vs-bf16 tolerance the engines already accept (docs/performance.md)
covers TF32's smaller error, so a GPU run in fp32 uses it and the header says so.
"""

from __future__ import annotations

import os
from typing import Any

#: The device every command takes by default (``--device``).
DEFAULT = "auto"
#: ``MIRAGEDET_TF32=0`` keeps fp32 matmuls in full fp32 on the GPU (for exact comparisons).
TF32_ENV = "MIRAGEDET_TF32"


def resolve_device(name: Any = None) -> Any:
    """A ``torch.device`` for ``name``: None or ``auto`` -> ``cuda`` when a CUDA GPU is usable,
    else ``cpu``; anything else as torch reads it (``cpu``, ``cuda``, ``cuda:1``, a device).
    A CUDA device asked for on a machine without one is a clear error, not torch's trace."""
    import torch

    if isinstance(name, torch.device):
        device = name
    elif name is None or str(name).strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(str(name).strip())
        except RuntimeError as exc:
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {name!r}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but no CUDA GPU is usable here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ValueError(f"device {name!r} asked for, but this machine has {count} GPU(s)")
    return device


def enable_tf32(device: Any) -> str | None:
    """Turn TF32 on for fp32 matmuls and convolutions on a GPU that has it (compute capability
    8.0+), unless ``$MIRAGEDET_TF32`` is 0; returns the note for the header, or None (CPU, older
    GPU, or turned off)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or os.environ.get(TF32_ENV, "1") == "0":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        return None
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return "TF32 for fp32 matmuls"


def describe(device: Any) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200, 139 GiB)``."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"


def gpu_share(device: Any, workers: int) -> float:
    """The GPU each of ``workers`` processes asks for (Ray actors), when ``device`` is ``auto`` or
    a CUDA one and a GPU is present, else none: a whole GPU each while there are enough (a
    process scores on one GPU), else an equal fraction that packs whole onto each GPU (Ray
    places a fraction below 1 on a single GPU: 3 workers on 2 GPUs ask for 1/2 each, not 2/3)."""
    import math

    import torch

    if resolve_device(device).type != "cuda":
        return 0.0
    gpus = torch.cuda.device_count()
    return 1.0 if workers <= gpus else 1.0 / math.ceil(workers / gpus)
