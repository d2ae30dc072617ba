"""A training run measured before it is started: a few real steps timed on this machine, the
estimate per epoch and in all, and the peak memory; nothing written."""

from __future__ import annotations

import time
from typing import Any

import torch

from .log import NoLog


def dry_run(trainer: Any, steps: int = 3) -> dict[str, Any]:
    """Time ``steps`` real optimizer steps on this machine (after one warm-up step) and
    estimate the run: per epoch and in all, with the peak memory. Writes nothing: no output
    folder, no log, no checkpoint; the model's prompts are changed in memory only."""
    import resource

    from rich.progress import Progress

    c = trainer.config
    saved = c.max_steps, c.save_every
    c.save_every = None
    steps = max(1, min(steps, trainer.steps_per_epoch - 1)) if trainer.steps_per_epoch > 1 else 0
    order = trainer._order(0)
    progress = Progress(disable=True)
    task = progress.add_task("dry run")
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    try:
        c.max_steps = 1  # warm-up: first-call costs (allocations, kernels) are not the rate
        trainer._run_epoch(order[: c.batch_size], NoLog(), progress, task)
        start = time.perf_counter()
        if steps:
            c.max_steps = 1 + steps
            trainer._run_epoch(
                order[c.batch_size : (1 + steps) * c.batch_size], NoLog(), progress, task
            )
        per_step = (time.perf_counter() - start) / steps if steps else float("nan")
    finally:
        c.max_steps, c.save_every = saved
    total_steps = (
        trainer.total_steps if c.max_steps is None else min(c.max_steps, trainer.total_steps)
    )
    peak = (
        torch.cuda.max_memory_allocated(trainer.device) / 2**20
        if trainer.device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    cached = trainer.can_cache_features()  # features once: later epochs cost next to nothing
    return {
        "cached_features": cached,
        "steps_timed": steps,
        "seconds_per_step": per_step,
        "images_per_s": c.batch_size / per_step if steps else float("nan"),
        "steps_per_epoch": trainer.steps_per_epoch,
        "epoch_s": per_step * trainer.steps_per_epoch,
        "total_steps": total_steps,
        "total_s": per_step
        * (min(total_steps, trainer.steps_per_epoch) if cached else total_steps),
        "peak_mib": peak,
        "peak_kind": "CUDA allocated" if trainer.device.type == "cuda" else "process RSS",
        "device": str(trainer.device),
        "skipped": list(trainer.skipped),
    }
