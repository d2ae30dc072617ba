"""miragedet detect and score-dataset: scoring images one by one or by the million."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ...data.formats import summarize_skipped
from .common import (
    AGGREGATE_HELP,
    BACKEND_HELP,
    BATCH_HELP,
    DEVICE_HELP,
    FPS_HELP,
    FRAMES_HELP,
    MAX_SECONDS_HELP,
    MAX_TILES_HELP,
    PRECISION_HELP,
    VIEW_HELP,
    console,
    fail,
    run_or_checkpoint,
    sampling_options,
    view_options,
)


def detect(
    inputs: list[str] = typer.Argument(
        ...,
        help="Image and video files, folders (recursive), globs, or - for paths on stdin.",
    ),
    model: str = typer.Option(
        None, "--model", "-m", help="Checkpoint directory or hub id (or --server)."
    ),
    server: str = typer.Option(
        None,
        "--server",
        help="Score on this miragedet server (URL) instead of a local model; every option and "
        "format works the same (docs/api.md).",
    ),
    api_key: str = typer.Option(
        None, envvar="MIRAGEDET_API_KEY", help="The server's API key (with --server)."
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table|json|jsonl|csv"),
    output: Path = typer.Option(None, "--output", "-o", help="Write rows here (streamed)."),
    resume: bool = typer.Option(False, help="Skip inputs already in --output; append the rest."),
    provenance: bool = typer.Option(
        True,
        help="Also read C2PA, XMP, generator parameters and EXIF; a declaration of generative "
        "AI decides the verdict (basis column).",
    ),
    trust_anchors: Path = typer.Option(
        None,
        help="PEM file of C2PA signers you trust: their valid camera-capture claims may "
        "overrule a 'fake' pixel label.",
    ),
    watermarks: bool = typer.Option(
        False, help="Also look for generators' invisible watermarks (SDXL, SD 1.x; slower)."
    ),
    stability: bool = typer.Option(
        False,
        help="Also score re-deliveries (thumbnails, JPEG "
        "re-save, crop); label 'uncertain' when they disagree or "
        "the score is near the threshold.",
    ),
    stability_variants: str = typer.Option(
        None, help="Comma-separated, default downscale:512,downscale:256,jpeg:75,crop:0.8"
    ),
    stability_margin: float = typer.Option(None, help="Default 0.05."),
    backend: str = typer.Option(None, help=BACKEND_HELP),
    threshold: float = typer.Option(None, help="Default: the checkpoint's threshold."),
    batch_size: int = typer.Option(None, "--batch-size", help=BATCH_HELP),
    threads: int = typer.Option(
        None, help="Decode threads (default: the CPUs this process may use, 2 to 8)."
    ),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    exact_decode: bool = typer.Option(
        False, help="Decode JPEGs at full size (default: reduced scale when far larger)."
    ),
    list_skipped: bool = typer.Option(
        False, help="Name each file of the folders not scored (not an image, video, hidden)."
    ),
    view: str = typer.Option(None, help=VIEW_HELP),
    max_tiles: int = typer.Option(None, help=MAX_TILES_HELP),
    aggregate: str = typer.Option(None, help=AGGREGATE_HELP),
    where: Path = typer.Option(
        None, help="With --view tiles/crop: draw each image's where-map (a PNG per image) here."
    ),
    frames: int = typer.Option(None, "--frames", help=FRAMES_HELP),
    fps: float = typer.Option(None, "--fps", help=FPS_HELP),
    max_seconds: float = typer.Option(None, "--max-seconds", help=MAX_SECONDS_HELP),
    timeline: Path = typer.Option(
        None,
        help="Draw each clip's timeline here (a PNG per clip: p(fake) over time with a strip "
        "of its frames).",
    ),
) -> None:
    """Score images and videos. Exit status: 0 all scored, 1 some inputs could not be read, 2
    usage error.

    Folders are walked for images and videos by content (any extension or none); what else
    they hold is counted in the summary and named with --list-skipped. A video or animated
    image is scored by its frames (docs/video.md): one row per clip, with its timeline."""
    import sys

    from ...inference.engine import engine_text
    from ...inference.loader import load_detector
    from ...inference.stability import Stability
    from ..detect import discover, run_detect

    try:
        err = Console(stderr=True)
        if (model is None) == (server is None):
            raise ValueError("give a model (-m/--model) or a server (--server URL), one of them")
        found = discover(inputs, sys.stdin)
        model = run_or_checkpoint(model, lambda m: err.print(f"[dim]{escape(m)}[/dim]"))
        if server is not None:
            detector = _remote(server, api_key, threshold, batch_size, view, max_tiles, aggregate,
                               frames, fps, max_seconds, trust_anchors, watermarks)  # fmt: skip
        else:
            detector = load_detector(
                model,
                backend,
                notify=lambda message: err.print(f"[dim]{escape(message)}[/dim]", highlight=False),
                threshold=threshold,
                batch_size=batch_size,
                decode_threads=threads,
                device=device,
                precision=precision,
                draft=not exact_decode,
                view=view_options(view, max_tiles, aggregate),
                sampling=sampling_options(frames, fps, max_seconds),
                images=len(found.paths),  # torch.compile competes only for a job that earns it
            )
            if trust_anchors is not None:
                from ...provenance.c2pa_manifest import load_trust_anchors

                detector.trust_anchors = load_trust_anchors(trust_anchors)
            detector.watermarks = watermarks
        if where is not None and detector.view.kind == "resize":
            raise ValueError("--where draws tiles: use it with --view tiles (or crop)")
        engine = detector.engine_info()
        figures = engine.get("ms_per_image")
        chosen = (
            f"; engine {engine_text(engine['backend'], engine['reason'], figures)}"
            if detector.engine
            else ""
        )
        err.print(
            f"[dim]{escape(model or server)}: {detector.precision} "
            f"({escape(detector.precision_reason)}){escape(chosen)}{escape(_placement(detector))}"
            "[/dim]",
            highlight=False,
        )
        counts = run_detect(
            detector,
            found.paths,
            output=output,
            fmt=fmt,
            resume=resume,
            provenance=provenance,
            console=console,
            stability=Stability.parse(stability_variants, stability_margin) if stability else None,
            progress_console=Console(stderr=True),
            where=where,
            timeline=timeline,
        )
    except (ValueError, OSError) as exc:
        raise fail(exc) from exc
    err = Console(stderr=True)
    err.print(
        f"{counts['scored']} scored, {counts['failed']} failed"
        + (f", {counts['skipped']} already in {output}" if counts["skipped"] else "")
        + (f", {summarize_skipped(found.skipped)}" if found.skipped else ""),
        highlight=False,
    )
    _list_skipped(err, found.skipped, list_skipped)
    if counts["failed"]:
        raise typer.Exit(1)


def _remote(server, api_key, threshold, batch_size, view, max_tiles, aggregate, frames, fps,
            max_seconds, trust_anchors, watermarks):  # fmt: skip
    """A Client for ``detect --server``: the options the server takes per request are sent; the
    ones that belong to the server (its trust anchors, watermark search) are refused here."""
    from ...inference.remote import Client, RemoteError

    if trust_anchors is not None or watermarks:
        raise ValueError(
            "--trust-anchors and --watermarks are the server's settings "
            "(miragedet serve --trust-anchors/--watermarks), not per request"
        )
    client = Client(server, api_key, batch_size=batch_size or 32, view=view, max_tiles=max_tiles,
                    aggregate=aggregate, threshold=threshold, frames=frames, fps=fps,
                    max_seconds=max_seconds)  # fmt: skip
    try:
        client.info()
    except RemoteError as exc:
        raise ValueError(str(exc)) from exc
    return client


def _placement(detector) -> str:
    """ "; on cuda:0 (NVIDIA H200, 139 GiB), TF32, batch 256 (...); JPEGs decoded on ..." for a
    local detector (nothing for a server's)."""
    device = getattr(detector, "device", None)
    if device is None or not hasattr(detector, "batch_reason"):
        return ""
    from ...model.device import describe

    parts = [f"on {describe(device)}"]
    if getattr(detector, "tf32", None):
        parts.append(detector.tf32)
    if detector.batch_reason != "as asked":
        parts.append(f"batch {detector.batch_size} ({detector.batch_reason})")
    if device.type == "cuda":
        parts.append(detector.decode_reason)
    return "; " + ", ".join(parts)


def _list_skipped(err: Console, skipped: list[tuple[str, str]], requested: bool) -> None:
    if requested:
        for path, reason in skipped:
            err.print(f"skipped  {escape(path)}: {reason}", highlight=False)
    elif skipped:
        err.print("[dim](--list-skipped names them)[/dim]")


def score_dataset(
    source: str = typer.Argument(
        ...,
        metavar="INPUT",
        help="A folder, a .csv/.parquet/.jsonl manifest with a 'path' column, a .txt list, "
        "or a storage URI (s3://bucket/prefix) that pyarrow can list.",
    ),
    output: Path = typer.Argument(..., help="Folder of Parquet shards (part-NNNNN.parquet)."),
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint directory or hub id."),
    engine: str = typer.Option("ray", help="ray (Ray Data actors) or local (this process)."),
    workers: int = typer.Option(2, help="Ray actors, each with its own copy of the model."),
    cpus_per_worker: float = typer.Option(1.0),
    gpus_per_worker: float = typer.Option(
        None,
        help="GPUs each Ray actor asks for. Default: with --device auto or cuda, the GPUs here "
        "shared among the workers (1 GPU, 2 workers: 0.5 each); else 0.",
    ),
    address: str = typer.Option(
        None, help="Ray cluster to join (auto, ray://host:10001); default: a local Ray."
    ),
    batch_size: int = typer.Option(None, "--batch-size", help=BATCH_HELP),
    shard_size: int = typer.Option(1000, help="Inputs per Parquet shard (the unit of resume)."),
    backend: str = typer.Option(None, help=BACKEND_HELP),
    threshold: float = typer.Option(None, help="Default: the checkpoint's threshold."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    list_skipped: bool = typer.Option(
        False, help="Name each file of the input not scored (not an image, video, hidden)."
    ),
    provenance: bool = typer.Option(
        True, help="Read C2PA, XMP, generator parameters, EXIF: verdict/basis/provenance columns."
    ),
    view: str = typer.Option(None, help=VIEW_HELP),
    max_tiles: int = typer.Option(None, help=MAX_TILES_HELP),
    aggregate: str = typer.Option(None, help=AGGREGATE_HELP),
    frames: int = typer.Option(None, "--frames", help=FRAMES_HELP),
    fps: float = typer.Option(None, "--fps", help=FPS_HELP),
    max_seconds: float = typer.Option(None, "--max-seconds", help=MAX_SECONDS_HELP),
) -> None:
    """Score a large collection into Parquet shards; rerun the same command to resume.

    Videos and animated images are scored by their frames: a row per clip (frames, duration,
    and each scored frame's p(fake) in the regions column).

    Exit status: 0 all scored, 1 some inputs could not be read (error rows), 2 usage error."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..score_dataset import score_dataset as run

    err = Console(stderr=True)
    progress = Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = progress.add_task("score", total=None)

    def on_start(report, pending: int) -> None:
        err.print(f"[dim]engine {escape(report.engine)}[/dim]", highlight=False)
        if report.shards_done_before:
            err.print(
                f"resuming: {report.shards_done_before} of {report.shards} shards already in "
                f"{output}"
            )
        progress.update(task, total=pending)

    try:
        with progress:
            report = run(
                source,
                output,
                model,
                engine=engine,
                workers=workers,
                batch_size=batch_size,
                shard_size=shard_size,
                backend=backend,
                threshold=threshold,
                device=device,
                precision=precision,
                provenance=provenance,
                view=view_options(view, max_tiles, aggregate),
                sampling=sampling_options(frames, fps, max_seconds),
                cpus_per_worker=cpus_per_worker,
                gpus_per_worker=gpus_per_worker,
                address=address,
                on_start=on_start,
                on_rows=lambda n: progress.update(task, advance=n),
                notify=lambda message: err.print(f"[dim]{escape(message)}[/dim]", highlight=False),
            )
    except (ValueError, OSError) as exc:
        raise fail(exc) from exc
    err.print(
        f"{report.scored} scored, {report.failed} failed, {report.total} inputs in "
        f"{report.shards} shards ({report.shards_done_before} done before) -> {output}"
        + (f"; {report.images_per_s:.1f} images/s" if report.scored + report.failed else "")
        + (f"; {summarize_skipped(report.skipped)}" if report.skipped else ""),
        highlight=False,
    )
    _list_skipped(err, report.skipped, list_skipped)
    if report.failed:
        raise typer.Exit(1)
