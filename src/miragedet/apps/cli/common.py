"""What every command shares: the console, the help texts of options used by several commands,
and small helpers (errors, lists, the view options, trust anchors, durations, models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

PRECISION_HELP = (
    "auto (bf16 where the hardware computes it natively, else fp32), fp32, bf16, fp16, int8 (CPU)."
)

VIEW_HELP = (
    "resize (CLIP's, the paper's), crop (native-resolution centre crop) or tiles "
    "(native-resolution tiles covering the image; a where-map per image). Default: the "
    "checkpoint's (tiles for one trained with --view crop). See docs/views.md."
)

MAX_TILES_HELP = "With --view tiles: at most this many per image (thinned evenly). Default 16."

AGGREGATE_HELP = (
    "With --view tiles: top-k (default: the most suspicious quarter of the tiles), mean-logit "
    "(every tile) or max (the most suspicious tile). See docs/views.md."
)


def view_options(view: str | None, max_tiles: int | None, aggregate: str | None) -> dict | None:
    """What the view options ask for (a missing kind: the checkpoint's; see views.resolve)."""
    options = {"kind": view, "max_tiles": max_tiles, "aggregate": aggregate}
    return options if any(v is not None for v in options.values()) else None


BACKEND_HELP = (
    "auto (default, or $MIRAGEDET_BACKEND): the fastest engine that gives the same scores on "
    "this machine, measured once and cached (docs/performance.md); torch; onnx (the "
    "checkpoint's model.onnx on ONNX Runtime, see `miragedet export`); or compile (PyTorch "
    "through torch.compile: the first batch compiles, for tens of seconds)."
)
DEVICE_HELP = (
    "auto (default: a CUDA GPU when one is present, else the CPU), cpu, cuda or cuda:N. On a GPU, "
    "fp32 matmuls use TF32 ($MIRAGEDET_TF32=0 turns that off)."
)
BATCH_HELP = (
    "Images per forward. Default: 32 on a CPU; on a GPU the largest that fits half its free "
    "memory (up to 256). A GPU out-of-memory error halves it and goes on."
)
FRAMES_HELP = "Videos and animated images: frames scored per clip, evenly spread. Default 16."
FPS_HELP = "Videos: sample this many frames per second of the clip instead (at most 256)."
MAX_SECONDS_HELP = "Videos: only the first this many seconds are sampled."


def sampling_options(frames: int | None, fps: float | None, max_seconds: float | None) -> Any:
    """The clip sampling asked for (:class:`miragedet.data.video.Sampling`), or None (the
    detector's default)."""
    if frames is None and fps is None and max_seconds is None:
        return None
    from ...data.video import DEFAULT_FRAMES, Sampling

    return Sampling(frames=frames or DEFAULT_FRAMES, fps=fps, max_seconds=max_seconds)


console = Console()


def fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(2)


def csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def trust(path: Path | None) -> str | None:
    from ...provenance.c2pa_manifest import load_trust_anchors

    try:
        return load_trust_anchors(path) if path is not None else None
    except (OSError, ValueError) as exc:
        raise fail(exc) from exc


def duration(seconds: float) -> str:
    if seconds != seconds:  # nan: nothing was timed
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def load_model(spec: str, device: str | None = None):
    """A checkpoint (or ``zero-shot:BACKBONE``) as a MiraGe, on ``device`` when one is named
    (``auto``: a CUDA GPU when present)."""
    from ...model.backbone import load_backbone
    from ...model.config import ModelConfig
    from ...model.device import resolve_device
    from ...model.mirage import MiraGe, load_pretrained

    if spec.startswith("zero-shot:"):
        model = MiraGe(
            load_backbone(spec.removeprefix("zero-shot:")), ModelConfig.for_method("zero-shot")
        )
    else:
        model = load_pretrained(spec)
    return model if device is None else model.to(resolve_device(device))


def run_or_checkpoint(model: str | None, say: Any) -> str | None:
    """``model`` as given, or, for a training run's folder (``train -o RUN``), its best (else
    last) checkpoint, told through ``say``; a folder with no checkpoint is a clear error."""
    if model is None or not Path(model).is_dir() or (Path(model) / "config.json").is_file():
        return model
    from ...model.checkpoint import run_checkpoint

    chosen = run_checkpoint(Path(model))
    say(f"{model} is a training run's folder: scoring with its {chosen.name} checkpoint ({chosen})")
    return str(chosen)
