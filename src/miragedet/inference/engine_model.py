"""A loaded MiraGe whose forward runs on the engine ``--backend`` picks: what ``evaluate`` scores
with (its data loaders, tiles and reports call ``model(pixels).probs``; every other attribute is
the PyTorch model's)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class EngineOutput:
    """The forward's class probabilities (what scoring reads), computed by another engine."""

    probs: torch.Tensor


class OnnxForward:
    """``model`` with ``model(pixels)`` answered by an ONNX Runtime graph of the same
    checkpoint (an :class:`~miragedet.inference.onnx.OnnxDetector`)."""

    def __init__(self, model: Any, onnx: Any) -> None:
        self._model = model
        self._onnx = onnx

    def __call__(self, pixels: torch.Tensor) -> EngineOutput:
        return EngineOutput(torch.from_numpy(self._onnx.forward_tensors(pixels)))

    def __getattr__(self, name: str) -> Any:  # everything else: the PyTorch model's
        return getattr(self._model, name)


@dataclass
class Placed:
    """What runs the forward, and the words for the header."""

    model: Any  # the MiraGe, or an OnnxForward over it
    backend: str  # "torch" or "onnx"
    reason: str
    precision: str  # what the scores are computed in


def place(
    model: Any,
    checkpoint: str | os.PathLike | None,
    backend: str,
    precision: str,
    view: Any = None,
    batch_size: int = 64,
    notify: Callable[[str], None] | None = None,
) -> Placed:
    """``model`` (already cast to ``precision``) on ``backend``: ``torch`` as it is, ``onnx``
    on the checkpoint's exported graph (fp32/int8), ``auto`` as
    :func:`miragedet.inference.engine.choose` decides (a model without a checkpoint folder, e.g.
    zero-shot, stays on PyTorch)."""
    from .engine import choose, onnx_graph
    from .onnx import OnnxDetector

    as_is = Placed(model, "torch", "as requested", precision)
    if backend == "torch":
        return as_is
    if getattr(model, "image_features_frozen", False):  # one engine for the whole report
        return Placed(model, "torch", "frozen image features: scored from the feature cache",
                      precision)  # fmt: skip
    directory = Path(checkpoint) if checkpoint is not None else None
    if directory is None or not (directory / "config.json").is_file():
        if backend == "onnx":
            raise ValueError("--backend onnx needs a checkpoint directory (see `miragedet export`)")
        return Placed(model, "torch", "no checkpoint folder to export from", precision)
    reason = "as requested"
    if backend == "auto":
        choice = choose(directory, view=view, batch_size=batch_size, precision=precision,
                        device=str(model.clip.logit_scale.device), notify=notify)  # fmt: skip
        if choice.backend == "torch":
            return Placed(model, "torch", choice.describe(), precision)
        reason = choice.describe()
    elif backend != "onnx":
        raise ValueError(f"backend must be auto, torch or onnx, not {backend!r}")
    from ..model.checkpoint import read_config

    graph = onnx_graph(directory, notify)
    onnx = OnnxDetector(graph, read_config(directory), precision=precision)
    return Placed(OnnxForward(model, onnx), "onnx", reason, onnx.precision)
