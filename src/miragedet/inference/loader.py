"""A Detector from a checkpoint on the engine asked for (PyTorch or ONNX Runtime)."""

from __future__ import annotations

from typing import Any

from .detector import Detector


def load_detector(model: str, backend: str = "torch", **kwargs: Any) -> Detector:
    """A Detector for a checkpoint, on PyTorch (``torch``) or on ONNX Runtime (``onnx``: the
    checkpoint's model.onnx, see `miragedet export`)."""
    if backend == "onnx":
        from .onnx import OnnxDetector

        kwargs.pop("device", None)
        return OnnxDetector.from_pretrained(model, **kwargs)
    if backend != "torch":
        raise ValueError(f"backend must be torch or onnx, not {backend!r}")
    return Detector.from_pretrained(model, **kwargs)
