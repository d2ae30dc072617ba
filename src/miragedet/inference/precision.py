"""Which precision the frozen network runs in: chosen from the hardware (``auto``), or as asked.

``auto`` picks what is fast *on the machine it runs on*: bf16 on a GPU that supports it (else
fp16), bf16 on a CPU that computes it natively (AVX512-BF16 or AMX: oneDNN reports it), fp32 on
any other CPU. On a CPU without native bf16 (AVX2-only parts such as many AMD EPYC and older Xeons,
most laptops) bf16 is emulated and runs several times *slower* than fp32 (7-9x measured with
``benchmarks/bench_forward.py`` on an AMD EPYC with AVX2 only), so ``auto`` never picks it there and
an explicit ``--precision bf16`` warns.

``int8`` (CPU only, asked for explicitly) quantises the frozen vision encoder's linear layers
dynamically (int8 weights, activations quantised per batch) when the detector loads, from the same
checkpoint: 2.2x the fp32 forward for ViT-B/32 on the Xeon of ``docs/performance.md``, p(fake)
within :data:`INT8_TOLERANCE`. ``auto`` never picks it: how far int8 moves the scores depends on the
trained prompts, which only a measurement on the user's own checkpoint and data can tell.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
#: The largest change of p(fake) against fp32 that bf16 is tested to stay within.
TOLERANCE = 0.02
#: The same for int8: activations are quantised per batch, which costs more on narrow layers
#: (0.024 measured on the tests' 64-wide tiny model; 0.002 on ViT-B/32 shapes).
INT8_TOLERANCE = 0.05


class SlowPrecisionWarning(UserWarning):
    """The precision asked for is emulated on this hardware: slower than fp32, not faster."""


def cpu_native(kind: str) -> bool:
    """Whether this CPU computes ``kind`` ("bf16" or "fp16") natively, as oneDNN sees it."""
    probe = {
        "bf16": "_is_mkldnn_bf16_supported",
        "fp16": "_is_mkldnn_fp16_supported",
    }[kind]
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Choice:
    precision: str  # fp32 | bf16 | fp16
    reason: str


def resolve(
    requested: str, device: torch.device | str, option: str = "--precision", plain: str = "fp32"
) -> Choice:
    """The precision to run in on ``device`` for ``requested`` (``auto`` or an explicit one);
    ``option`` and ``plain`` name the flag and its full-precision value in the warning."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    device = torch.device(device)
    if requested == "auto":
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            if torch.cuda.is_bf16_supported():
                return Choice("bf16", f"auto: {name} computes bf16")
            return Choice("fp16", f"auto: {name} has no bf16, fp16 instead")
        if device.type == "cpu":
            capability = torch.backends.cpu.get_cpu_capability()
            if cpu_native("bf16"):
                return Choice("bf16", f"auto: this CPU computes bf16 natively ({capability})")
            return Choice(
                "fp32",
                f"auto: this CPU ({capability}) has no native bf16; emulated bf16 would be "
                "several times slower than fp32",
            )
        return Choice("fp32", f"auto: fp32 on {device.type}")
    if requested == "int8" and device.type != "cpu":
        raise ValueError("--precision int8 is a CPU path (dynamic int8 on fbgemm/oneDNN)")
    if device.type == "cpu" and requested in ("bf16", "fp16") and not cpu_native(requested):
        warnings.warn(
            f"{option} {requested} on a CPU without native {requested} "
            f"({torch.backends.cpu.get_cpu_capability()}): it is emulated and several times "
            f"slower than fp32; use {option} auto (or {plain})",
            SlowPrecisionWarning,
            stacklevel=3,
        )
    return Choice(requested, "as requested")


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (a MiraGe, changed in place) with its frozen CLIP vision encoder's ``nn.Linear``
    layers replaced by dynamically quantised int8 ones (PyTorch's ``quantize_dynamic``; the prompt
    maps, text tower and projections stay fp32). ONNX Runtime's quantiser on the exported graph
    ran 1.4x faster still for ViT-B/32 here but needs the ONNX export (10 s for B/32, minutes for
    L/14) and a second file; this needs neither. PyTorch marks ``torch.ao.quantization`` and
    quantised tensors as deprecated in favour of torchao (still present and tested in 2.13);
    the call is isolated here, and ``tests/test_precision.py`` fails the day it stops working."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        from torch.ao.quantization import quantize_dynamic

        vision = model.clip.vision_model
        vision.encoder = quantize_dynamic(vision.encoder, {torch.nn.Linear}, dtype=torch.qint8)
    return model


def apply(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """``model`` (changed in place) in a resolved precision: the frozen network cast once to
    bf16/fp16 (autocast would re-cast every frozen weight on every call: it caches casts only of
    weights that need gradients), or its vision encoder quantised to int8; fp32 as it is."""
    if precision == "int8":
        return quantize_int8(model)
    if precision in ("bf16", "fp16"):
        return model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    return model
