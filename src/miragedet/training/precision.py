"""Which autocast precision a training run uses (``train --amp``), chosen from the hardware."""

from __future__ import annotations

import torch

from ..inference.precision import Choice, resolve

AMPS = ("auto", "none", "bf16", "fp16")


def training_precision(requested: str, device: torch.device | str) -> Choice:
    """The autocast precision training runs in for ``train --amp`` (``none`` is fp32): ``auto``
    is bf16 on a GPU that supports it (else fp16) and on a CPU that computes bf16 natively, else
    none; an explicit bf16/fp16 on a CPU that only emulates it warns (several times slower than
    fp32: the feature pass of a linear probe, 6-9x on AVX2-only CPUs)."""
    if requested not in AMPS:
        raise ValueError(f"amp must be one of {', '.join(AMPS)}, not {requested!r}")
    device = torch.device(device)
    if requested == "auto":
        choice = resolve("auto", device)
        return Choice("none" if choice.precision == "fp32" else choice.precision, choice.reason)
    if requested == "none":
        return Choice("none", "as requested (fp32)")
    return resolve(requested, device, option="--amp", plain="none")
