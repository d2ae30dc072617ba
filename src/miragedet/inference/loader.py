"""A Detector from a checkpoint on the engine asked for (PyTorch, ONNX Runtime, or ``auto``:
the fastest of them that gives the same scores here, the default)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .detector import Detector

if TYPE_CHECKING:
    from .engine import EngineChoice

BACKENDS = ("auto", "torch", "onnx")
#: Names the engine when a caller gives none (a fleet's pin: ``MIRAGEDET_BACKEND=torch``).
BACKEND_ENV = "MIRAGEDET_BACKEND"


def default_backend() -> str:
    """``$MIRAGEDET_BACKEND`` when set, else ``auto``."""
    return os.environ.get(BACKEND_ENV) or "auto"


def _to_stderr(message: str) -> None:
    print(f"miragedet: {message}", file=sys.stderr)


def load_detector(
    model: str,
    backend: str | None = None,
    notify: Callable[[str], None] | None = None,
    engine: EngineChoice | None = None,
    **kwargs: Any,
) -> Detector:
    """A Detector for a checkpoint, on PyTorch (``torch``), on ONNX Runtime (``onnx``: the
    checkpoint's model.onnx, see `miragedet export`) or on the fastest of the two that gives the
    same scores here (``auto``, the default, or ``$MIRAGEDET_BACKEND``:
    :mod:`miragedet.inference.engine`; ``notify`` hears of a first-time export and
    measurement; ``engine``: a choice already made, e.g. by a driver for its workers). The
    detector's ``engine`` says what was chosen and why."""
    backend = backend or default_backend()
    if notify is None:  # a first-time export can take minutes: say so rather than stall
        notify = _to_stderr
    if backend == "auto":
        from ..model.checkpoint import resolve
        from .engine import choose

        directory = resolve(model)
        choice = engine or choose(
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
            try:
                detector = OnnxDetector(
                    onnx_graph(directory, notify), read_config(directory), **options
                )
            except Exception as exc:  # e.g. a cached graph damaged since it was measured
                from dataclasses import replace

                reason = f"ONNX Runtime could not run the graph now ({type(exc).__name__}: {exc})"
                choice = replace(choice, backend="torch", reason=reason[:300])
        if choice.backend != "onnx":
            detector = load_detector(str(directory), "torch", **kwargs)
        detector.engine = choice
        return detector
    if backend == "onnx":
        from .onnx import OnnxDetector

        kwargs.pop("device", None)
        return OnnxDetector.from_pretrained(model, **kwargs)
    if backend != "torch":
        given = "" if backend != os.environ.get(BACKEND_ENV) else f" (from ${BACKEND_ENV})"
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}{given}")
    return Detector.from_pretrained(model, **kwargs)
