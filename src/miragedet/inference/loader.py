"""A Detector from a checkpoint on the engine asked for (PyTorch or ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .detector import Detector

BACKENDS = ("torch", "onnx", "auto")


def load_detector(
    model: str,
    backend: str = "torch",
    notify: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> Detector:
    """A Detector for a checkpoint, on PyTorch (``torch``), on ONNX Runtime (``onnx``: the
    checkpoint's model.onnx, see `miragedet export`) or on the fastest of the two that gives the
    same scores here (``auto``: :mod:`miragedet.inference.engine`; ``notify`` hears of a
    first-time export and measurement). The detector's ``engine`` says what was chosen and
    why."""
    if backend == "auto":
        from ..model.checkpoint import resolve
        from .engine import choose

        directory = resolve(model)
        choice = choose(
            directory,
            view=kwargs.get("view"),
            batch_size=kwargs.get("batch_size", 32),
            precision=kwargs.get("precision", "auto"),
            device=kwargs.get("device"),
            notify=notify,
        )
        if choice.backend == "onnx":  # its graph may live in the user cache (read-only dir)
            from ..model.checkpoint import read_config
            from .engine import onnx_graph
            from .onnx import OnnxDetector

            options = {k: v for k, v in kwargs.items() if k != "device"}
            detector = OnnxDetector(onnx_graph(directory), read_config(directory), **options)
        else:
            detector = load_detector(str(directory), "torch", **kwargs)
        detector.engine = choice
        return detector
    if backend == "onnx":
        from .onnx import OnnxDetector

        kwargs.pop("device", None)
        return OnnxDetector.from_pretrained(model, **kwargs)
    if backend != "torch":
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return Detector.from_pretrained(model, **kwargs)
