"""A Detector from a checkpoint on the engine asked for (PyTorch, ONNX Runtime, PyTorch with
torch.compile, or ``auto``: the fastest of them that gives the same scores here, the default)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .detector import Detector

if TYPE_CHECKING:
    from .engine import EngineChoice

BACKENDS = ("auto", "torch", "onnx", "compile")
#: Names the engine when a caller gives none (a fleet's pin: ``MIRAGEDET_BACKEND=torch``).
BACKEND_ENV = "MIRAGEDET_BACKEND"


def default_backend() -> str:
    """``$MIRAGEDET_BACKEND`` when set, else ``auto``."""
    return os.environ.get(BACKEND_ENV) or "auto"


def resolve_backend(backend: str | None) -> str:
    """``backend``, else ``$MIRAGEDET_BACKEND``, else ``auto``; one of :data:`BACKENDS`."""
    backend = backend or default_backend()
    if backend not in BACKENDS:
        given = "" if backend != os.environ.get(BACKEND_ENV) else f" (from ${BACKEND_ENV})"
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}{given}")
    return backend


def onnx_on_choice(
    directory: Path, choice: EngineChoice, notify: Callable[[str], None] | None, **options: Any
) -> tuple[Detector | None, EngineChoice]:
    """For an ``auto`` choice of ONNX Runtime: its detector on the checkpoint's graph (which may
    live in the user cache), or None and the choice turned to PyTorch with the reason when the
    graph does not load now (e.g. damaged since it was measured)."""
    from ..model.checkpoint import read_config
    from .engine import onnx_graph
    from .onnx import OnnxDetector

    try:
        return OnnxDetector(
            onnx_graph(directory, notify), read_config(directory), **options
        ), choice
    except Exception as exc:
        reason = f"ONNX Runtime could not run the graph now ({type(exc).__name__}: {exc})"
        return None, replace(choice, backend="torch", reason=reason[:300])


def on_compile(
    detector: Detector, notify: Callable[[str], None], compile_s: float | None = None
) -> Detector:
    """``detector`` with its network run through torch.compile at its batch size
    (:mod:`miragedet.inference.compiled`), ``notify`` told that its first batch compiles
    (``compile_s``: what the auto choice measured)."""
    from .compiled import CompiledForward

    how_long = "tens of seconds on a CPU" if compile_s is None else (
        f"{compile_s:.0f} s when measured here; less with inductor's cache warm")  # fmt: skip
    notify(f"torch.compile compiles the network on its first batch ({how_long})")
    detector.model = CompiledForward(detector.model, detector.batch_size)
    return detector


def _to_stderr(message: str) -> None:
    print(f"miragedet: {message}", file=sys.stderr)


def load_detector(
    model: str,
    backend: str | None = None,
    notify: Callable[[str], None] | None = None,
    engine: EngineChoice | None = None,
    images: float = 0,
    **kwargs: Any,
) -> Detector:
    """A Detector for a checkpoint, on PyTorch (``torch``), on ONNX Runtime (``onnx``: the
    checkpoint's model.onnx, see `miragedet export`), on PyTorch through torch.compile
    (``compile``) or on the fastest of them that gives the same scores here (``auto``, the
    default, or ``$MIRAGEDET_BACKEND``: :mod:`miragedet.inference.engine`; torch.compile only
    competes for a job of ``images`` images large enough to earn its compile back, a server
    passing ``math.inf``; ``notify`` hears of a first-time export and measurement; ``engine``: a
    choice already made, e.g. by a driver for its workers). The detector's ``engine`` says what
    was chosen and why."""
    backend = resolve_backend(backend)
    if notify is None:  # a first-time export can take minutes: say so rather than stall
        notify = _to_stderr
    detector = _load(model, backend, notify, engine, images, **kwargs)
    detector.notify = notify  # e.g. a GPU out-of-memory error that halves the batch
    return detector


def _load(
    model: str,
    backend: str,
    notify: Callable[[str], None],
    engine: EngineChoice | None,
    images: float,
    **kwargs: Any,
) -> Detector:
    if backend == "auto":
        from ..model.checkpoint import resolve
        from .engine import choose
        from .pipeline import CPU_BATCH

        directory = resolve(model)
        choice = engine or choose(
            directory,
            view=kwargs.get("view"),
            batch_size=kwargs.get("batch_size") or CPU_BATCH,
            precision=kwargs.get("precision", "auto"),
            device=kwargs.get("device"),
            notify=notify,
            images=images,
        )
        detector = None
        if choice.backend == "onnx":
            options = {k: v for k, v in kwargs.items() if k != "device"}
            detector, choice = onnx_on_choice(directory, choice, notify, **options)
        if detector is None:
            detector = _load(str(directory), "torch", notify, None, images, **kwargs)
            if choice.backend == "compile":
                detector = on_compile(detector, notify, choice.compile_s)
        detector.engine = choice
        return detector
    if backend == "onnx":
        from .onnx import OnnxDetector

        kwargs.pop("device", None)
        return OnnxDetector.from_pretrained(model, **kwargs)
    if backend == "compile":
        return on_compile(Detector.from_pretrained(model, **kwargs), notify)
    return Detector.from_pretrained(model, **kwargs)
