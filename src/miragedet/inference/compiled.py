"""torch.compile as an engine: MiraGe's forward compiled by inductor for one batch shape (the
job's batch size), which the ``auto`` choice weighs against its compile time.

One shape, so that a process compiles once: a batch of at least half the compiled size is
padded up to it (the padding's rows are dropped), a smaller one (a job's last few images, a lone
request to a quiet server) runs the same weights eagerly, and a larger one is split. Dynamic
shapes (``torch.compile(dynamic=True)``) were tried instead and recompiled for new batch sizes
here (docs/performance.md)."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

#: Batch fields of MiraGe's output (one row per image); the others are per class or scalars.
_ROWS = ("logits", "image_embeds", "distance")


#: torch.compile's mode on a GPU: inductor's kernels replayed as one CUDA graph per batch (one
#: launch instead of hundreds, which a GIL shared with decode threads delays: docs/performance.md
#: "On a GPU"). The batch's shape is fixed (see the module), which CUDA graphs need.
GPU_MODE = "reduce-overhead"


def mode_for(device: Any) -> str | None:
    """torch.compile's mode for a model on ``device``: :data:`GPU_MODE` on a GPU, the default
    (None) on a CPU."""
    return GPU_MODE if torch.device(device).type == "cuda" else None


class CompiledForward:
    """``model`` with ``model(pixels)`` answered by its compiled forward at ``batch_size`` images
    (see the module); every other attribute is the model's. The first call compiles. ``mode``:
    torch.compile's (``auto``: :func:`mode_for` the device the model's weights are on; None:
    torch.compile's default; ``reduce-overhead``: CUDA graphs, whose outputs are
    copied out before the next replay overwrites them; every compiled call runs in one thread of
    its own, since CUDA graphs are recorded per thread: a server's forward, its warm-up and its
    video requests come from different threads, and would each record the graphs and keep
    their memory pool)."""

    def __init__(self, model: Any, batch_size: int, mode: str | None = "auto") -> None:
        self._model = model
        self.batch_size = max(1, int(batch_size))
        self.mode = mode_for(next(model.parameters()).device) if mode == "auto" else mode
        self._compiled = torch.compile(model, mode=self.mode)
        self._thread = (
            ThreadPoolExecutor(1, thread_name_prefix="miragedet-graphs")
            if self.mode == GPU_MODE
            else None
        )

    def __call__(self, pixels: torch.Tensor) -> Any:
        n, size = len(pixels), self.batch_size
        if n > size:
            parts = [self(pixels[i : i + size]) for i in range(0, n, size)]
            return dataclasses.replace(parts[0], **{f: _cat(parts, f) for f in _ROWS})
        if 2 * n < size:
            return self._model(pixels)
        return self.padded(pixels)

    def padded(self, pixels: torch.Tensor) -> Any:
        """The compiled forward of up to ``batch_size`` images, padded to it with copies of the
        first (one shape, one compile)."""
        if self._thread is None:
            return self._padded(pixels)
        modes = torch.is_inference_mode_enabled(), torch.is_grad_enabled()  # per thread in torch
        return self._thread.submit(self._padded, pixels, modes).result()

    def _padded(self, pixels: torch.Tensor, modes: tuple[bool, bool] | None = None) -> Any:
        if modes is not None:
            with torch.inference_mode(modes[0]), torch.set_grad_enabled(modes[1]):
                return self._padded(pixels)
        n, size = len(pixels), self.batch_size
        if n < size:
            pixels = torch.cat([pixels, pixels[:1].expand(size - n, *pixels.shape[1:])])
        graphs = self.mode == GPU_MODE
        if graphs:  # a new step: the last replay's outputs were copied out (below)
            torch.compiler.cudagraph_mark_step_begin()
        out = self._compiled(pixels)
        if n == size and not graphs:
            return out
        rows = {f: getattr(out, f)[:n] for f in _ROWS if getattr(out, f) is not None}
        if graphs:
            rows = {f: v.clone() for f, v in rows.items()} | {
                "text_embeds": out.text_embeds.clone()
            }
        return dataclasses.replace(out, **rows)

    def __getattr__(self, name: str) -> Any:  # everything else: the eager model's
        return getattr(self._model, name)


def _cat(parts: list[Any], name: str) -> torch.Tensor | None:
    values = [getattr(p, name) for p in parts]
    return None if values[0] is None else torch.cat(values)


@dataclasses.dataclass
class CompiledFigures:
    """What the calibration found of the compiled forward."""

    forward: CompiledForward  # compiled: time it with the other engines
    compile_s: float  # its first call: the compile (cold when inductor's cache was empty)
    parity: float  # max |p - p(PyTorch fp32)| on the check images, at the compiled shape


@torch.inference_mode()
def measure(
    model: Any, check: torch.Tensor, expected: Any, pixels: torch.Tensor
) -> CompiledFigures:
    """``model`` compiled for ``len(pixels)`` images, its compile time, and how far its scores on
    ``check`` are from ``expected`` (PyTorch fp32's probabilities) when run at that shape;
    raises what torch.compile raises (no C++ compiler, an operator inductor cannot lower)."""
    import numpy as np

    compiled = CompiledForward(model, len(pixels))
    start = time.perf_counter()
    compiled(pixels)  # the compile
    compile_s = time.perf_counter() - start
    parity = 0.0
    for i in range(0, len(check), len(pixels)):  # padded to the compiled shape: what jobs run
        chunk = check[i : i + len(pixels)]
        probs = compiled.padded(chunk).probs.float().cpu().numpy()
        parity = max(parity, float(np.abs(probs - expected[i : i + len(chunk)]).max()))
    return CompiledFigures(compiled, round(compile_s, 2), parity)


def compile_ahead(detector: Any) -> None:
    """Compile a detector's compiled forward now (a server, before it says it is ready), not on
    its first batch; nothing for another engine."""
    model = getattr(detector, "model", None)
    if isinstance(model, CompiledForward):
        size = detector.preprocess.image_size
        with torch.inference_mode():  # CUDA graphs: the first call warms up, the second records
            for _ in range(2 if model.mode == GPU_MODE else 1):
                model.padded(torch.zeros(1, 3, size, size, device=detector.device))
