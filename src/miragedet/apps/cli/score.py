"""miragedet detect and score-dataset: scoring images one by one or by the million."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ...data.formats import summarize_skipped
from ...inference.detector_config import DETECT, SCORE_DATASET, DetectorConfig
from .common import console, fail, run_or_checkpoint
from .options import detector_options


@detector_options(DETECT)
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
    list_skipped: bool = typer.Option(
        False, help="Name each file of the folders not scored (not an image, video, hidden)."
    ),
    where: Path = typer.Option(
        None, help="With --view tiles/crop: draw each image's where-map (a PNG per image) here."
    ),
    timeline: Path = typer.Option(
        None,
        help="Draw each clip's timeline here (a PNG per clip: p(fake) over time with a strip "
        "of its frames).",
    ),
    config: DetectorConfig = None,
) -> None:
    """Score images and videos. Exit status: 0 all scored, 1 some inputs could not be read, 2
    usage error.

    Folders are walked for images and videos by content (any extension or none); what else
    they hold is counted in the summary and named with --list-skipped. A video or animated
    image is scored by its frames (docs/video.md): one row per clip, with its timeline."""
    import sys

    from ..detect import discover, run_detect

    err = Console(stderr=True)
    try:
        if (model is None) == (server is None):
            raise ValueError("give a model (-m/--model) or a server (--server URL), one of them")
        config.check()
        found = discover(inputs, sys.stdin)
        model = run_or_checkpoint(model, lambda m: err.print(f"[dim]{escape(m)}[/dim]"))
        detector = _detector(model, server, api_key, config, images=len(found.paths), err=err)
        if where is not None and detector.view.kind == "resize":
            raise ValueError("--where draws tiles: use it with --view tiles (or crop)")
        counts = run_detect(
            detector,
            found.paths,
            output=output,
            fmt=fmt,
            resume=resume,
            provenance=config.provenance,
            console=console,
            stability=config.stability_check(),
            progress_console=err,
            where=where,
            timeline=timeline,
        )
    except (ValueError, OSError) as exc:
        raise fail(exc) from exc
    err.print(
        f"{counts['scored']} scored, {counts['failed']} failed"
        + (f", {counts['skipped']} already in {output}" if counts["skipped"] else "")
        + (f", {summarize_skipped(found.skipped)}" if found.skipped else ""),
        highlight=False,
    )
    _list_skipped(err, found.skipped, list_skipped)
    if counts["failed"]:
        raise typer.Exit(1)


def _detector(model, server, api_key, config: DetectorConfig, images: int, err: Console):
    """The local detector (or a server's Client) for ``detect``, its engine said on stderr."""
    from ...inference.detector import load_detector
    from ...inference.engine import engine_text

    if server is not None:
        detector = _remote(server, api_key, config)
    else:
        detector = load_detector(
            model,
            config,
            notify=lambda message: err.print(f"[dim]{escape(message)}[/dim]", highlight=False),
            images=images,  # torch.compile competes only for a job that earns it
        )
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
    return detector


def _remote(server: str, api_key: str | None, config: DetectorConfig):
    """A Client for ``detect --server``: the options the server takes per request are sent; the
    ones that belong to the server (its trust anchors, watermark search, engine) are refused."""
    from ...inference.remote import Client, RemoteError

    if config.trust_anchors is not None or config.watermarks:
        raise ValueError(
            "--trust-anchors and --watermarks are the server's settings "
            "(miragedet serve --trust-anchors/--watermarks), not per request"
        )
    client = Client(server, api_key, batch_size=config.batch_size or 32, view=config.view,
                    max_tiles=config.max_tiles, aggregate=config.aggregate,
                    threshold=config.threshold, frames=config.frames, fps=config.fps,
                    max_seconds=config.max_seconds)  # fmt: skip
    try:
        client.info()
    except RemoteError as exc:
        raise ValueError(str(exc)) from exc
    return client


def _placement(detector) -> str:
    """ "; on cuda:0 (...), TF32, batch 256 (...); ..." for a local detector (nothing for a
    server's client)."""
    placement = getattr(detector, "placement", None)
    return f"; {placement()}" if placement is not None else ""


def _list_skipped(err: Console, skipped: list[tuple[str, str]], requested: bool) -> None:
    if requested:
        for path, reason in skipped:
            err.print(f"skipped  {escape(path)}: {reason}", highlight=False)
    elif skipped:
        err.print("[dim](--list-skipped names them)[/dim]")


@detector_options(SCORE_DATASET)
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
    shard_size: int = typer.Option(1000, help="Inputs per Parquet shard (the unit of resume)."),
    list_skipped: bool = typer.Option(
        False, help="Name each file of the input not scored (not an image, video, hidden)."
    ),
    config: DetectorConfig = None,
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

    from ...inference.score_dataset import score_dataset as run

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
        where = f"; {report.placement}" if report.placement else ""
        err.print(f"[dim]engine {escape(report.engine)}{escape(where)}[/dim]", highlight=False)
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
                config,
                engine=engine,
                workers=workers,
                shard_size=shard_size,
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
