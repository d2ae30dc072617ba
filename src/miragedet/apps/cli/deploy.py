"""miragedet serve and export: the HTTP service and the ONNX graph."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from ...inference.detector_config import SERVE, DetectorConfig
from .common import console, csv_list, fail
from .options import detector_options


@detector_options(SERVE)
def serve(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint directory or hub id."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    max_wait_ms: float = typer.Option(10.0, help="How long a batch waits to fill."),
    max_queue: int = typer.Option(256, help="Images waiting before 503 + Retry-After."),
    max_body_mb: float = typer.Option(32.0),
    max_pixels: int = typer.Option(40_000_000),
    max_images: int = typer.Option(64, help="Images per request."),
    api_key: str = typer.Option(
        None, envvar="MIRAGEDET_API_KEY", help="Require this key (one key, named default)."
    ),
    api_keys: Path = typer.Option(
        None,
        help="File of keys, one per line: NAME KEY [RATE] [DAILY_IMAGES] (reloaded on SIGHUP; "
        "docs/api.md).",
    ),
    rate_limit: str = typer.Option(
        None, help="Requests per key, e.g. 60/minute (429 + Retry-After beyond)."
    ),
    daily_images: int = typer.Option(None, help="Images per key per day (429 beyond)."),
    cors: str = typer.Option(None, help="Comma-separated allowed origins."),
    max_tiles_limit: int = typer.Option(64, help="The most tiles a request may ask for."),
    max_video_mb: float = typer.Option(64.0, help="One video upload at most (MB)."),
    max_video_seconds: float = typer.Option(600.0, help="Longer clips are refused (413)."),
    log_level: str = typer.Option("info"),
    config: DetectorConfig = None,
) -> None:
    """Serve the detector over HTTP (POST /v1/detect) with a web page at /."""
    import time

    started = time.monotonic()  # readiness (log line, /metrics) is counted from here
    from ..server import ServerSettings
    from ..server import serve as run_server

    try:  # checked here, before the model loads in the background
        config.check()
        if api_keys is not None or rate_limit is not None:
            from ..server.keys import KeyRing

            KeyRing(api_keys, api_key, rate_limit, daily_images)
        settings = ServerSettings(
            **{f.name: getattr(config, f.name) for f in dataclasses.fields(DetectorConfig)},
            model=model,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            max_body_mb=max_body_mb,
            max_pixels=max_pixels,
            max_images=max_images,
            api_key=api_key,
            api_keys_file=str(api_keys) if api_keys else None,
            rate_limit=rate_limit,
            daily_images=daily_images,
            cors_origins=csv_list(cors) or [],
            max_tiles_limit=max_tiles_limit,
            max_video_mb=max_video_mb,
            max_video_seconds=max_video_seconds,
        )
    except (ValueError, OSError) as exc:
        raise fail(exc) from exc
    console.print(f"serving {model} on http://{host}:{port} (web page /, API docs /docs)")
    run_server(settings, host=host, port=port, log_level=log_level, started=started)


def export(
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint directory."),
    output: Path = typer.Option(
        None, "--output", "-o", help="Default: CHECKPOINT/model.onnx (then `--backend onnx`)."
    ),
    fmt: str = typer.Option("onnx", "--format", help="onnx"),
    legacy: bool = typer.Option(False, help="Use the TorchScript-based exporter."),
    check: bool = typer.Option(True, help="Compare ONNX Runtime with PyTorch on random input."),
    verbose: bool = typer.Option(False, "--verbose", help="Show torch.onnx's own export steps."),
) -> None:
    """Export the inference graph (vision tower + prompts + fixed text features -> probs)."""
    import numpy as np
    import torch

    from ...inference.onnx import InferenceGraph, OnnxNetwork, export_checkpoint
    from ...model.checkpoint import read_config
    from ...model.mirage import load_pretrained

    if fmt != "onnx":
        raise fail(ValueError(f"only --format onnx is supported, not {fmt!r}"))
    try:
        with console.status("exporting the inference graph"):
            path = export_checkpoint(model, output, dynamo=not legacy, verbose=verbose)
    except (ValueError, OSError) as exc:
        raise fail(exc) from exc
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")
    if check:
        torch_model = load_pretrained(model)
        onnx = OnnxNetwork(path, read_config(model))  # the graph just written, whatever its name
        size = torch_model.backbone.preprocess.image_size
        pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = InferenceGraph(torch_model)(pixels).numpy()
        try:
            diff = float(np.abs(onnx(pixels).probs.numpy() - expected).max())
        except Exception as exc:  # onnxruntime's own error types: a graph that does not run
            hint = "; try without --legacy" if legacy else ""
            reason = str(exc).strip()[:300]
            message = f"{path} was written but does not run on ONNX Runtime ({reason}){hint}"
            raise fail(ValueError(message)) from exc
        console.print(f"ONNX Runtime vs PyTorch: max abs difference {diff:.2e}")
