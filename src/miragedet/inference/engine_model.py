"""A loaded MiraGe whose forward runs on the engine ``--backend`` picks: what ``evaluate`` scores
with (its data loaders, tiles and reports call ``model(pixels).probs``; every other attribute is
the PyTorch model's)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class EngineOutput:
    """The forward's class probabilities (what scoring reads), computed by another engine."""

    probs: torch.Tensor


class OnnxForward:
    """``model`` with ``model(pixels)`` answered by an ONNX Runtime graph of the same
    checkpoint (an :class:`~miragedet.inference.onnx.OnnxNetwork`)."""

    def __init__(self, model: Any, onnx: Any) -> None:
        self._model = model
        self._onnx = onnx

    def __call__(self, pixels: torch.Tensor) -> EngineOutput:
        return EngineOutput(self._onnx(pixels).probs)

    def __getattr__(self, name: str) -> Any:  # everything else: the PyTorch model's
        return getattr(self._model, name)


@dataclass
class Placed:
    """What runs the forward, and the words for the header."""

    model: Any  # the MiraGe, or an OnnxForward or CompiledForward over it
    backend: str  # "torch", "onnx" or "compile"
    reason: str
    precision: str  # what the scores are computed in
    measured: dict[str, float] = field(default_factory=dict)  # auto: ms/image by engine


def place(
    model: Any,
    checkpoint: str | os.PathLike | None,
    backend: str | None,
    precision: str,
    view: Any = None,
    batch_size: int = 64,
    notify: Callable[[str], None] | None = None,
    images: float = 0,
    device_named: bool = False,
) -> Placed:
    """``model`` (already cast to ``precision``) on ``backend`` (None: the default,
    :func:`~miragedet.inference.detector_config.resolve_backend`): ``torch`` as it is,
    ``onnx`` on the checkpoint's exported graph (fp32/int8), ``compile`` through torch.compile,
    ``auto`` as :func:`miragedet.inference.engine.choose` decides for a job of ``images``
    images (a model without a checkpoint folder, e.g. zero-shot, stays on PyTorch).
    ``device_named``: the user named the GPU (``onnx`` without its CUDA provider is then an
    error, not the CPU)."""
    from .compiled import CompiledForward
    from .detector_config import resolve_backend
    from .engine import choose, graph_on_choice, onnx_graph, onnx_providers
    from .onnx import OnnxNetwork

    backend = resolve_backend(backend)
    if backend == "torch":
        return Placed(model, "torch", "as requested", precision)
    if backend == "compile":
        return Placed(CompiledForward(model, batch_size), "compile", "as requested", precision)
    if getattr(model, "image_features_frozen", False):  # one engine for the whole report
        return Placed(model, "torch", "frozen image features: scored from the feature cache",
                      precision)  # fmt: skip
    if checkpoint is None:
        if backend == "onnx":
            raise ValueError("--backend onnx needs a checkpoint directory (see `miragedet export`)")
        return Placed(model, "torch", "no checkpoint folder to export from", precision)
    directory = Path(checkpoint)
    if backend == "onnx":
        from ..model.checkpoint import read_config

        providers = onnx_providers(str(model.clip.logit_scale.device), notify, device_named)
        onnx = OnnxNetwork(onnx_graph(directory, notify), read_config(directory), precision,
                           providers)  # fmt: skip
        return Placed(OnnxForward(model, onnx), "onnx", "as requested", onnx.precision)
    choice = choose(directory, view=view, batch_size=batch_size, precision=precision,
                    device=str(model.clip.logit_scale.device), notify=notify,
                    images=images)  # fmt: skip
    if choice.backend == "compile":
        forward = CompiledForward(model, batch_size)
        return Placed(forward, "compile", choice.reason, precision, choice.measured)
    onnx = None
    if choice.backend == "onnx":
        onnx, choice = graph_on_choice(directory, choice, notify, precision)
    if onnx is None:
        return Placed(model, "torch", choice.reason, precision, choice.measured)
    return Placed(OnnxForward(model, onnx), "onnx", choice.reason, onnx.precision, choice.measured)
