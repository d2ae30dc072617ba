"""The `miragedet` command: a thin shell over the library (no logic of its own)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from . import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Detect AI-generated images with MiraGe on a frozen CLIP.",
)
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"miragedet {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """miragedet: train, evaluate and run MiraGe detectors."""


@app.command()
def quickstart(
    output: Path = typer.Option(Path("miragedet-quickstart"), help="Where the checkpoint goes."),
    methods: str = typer.Option(
        "zero-shot,linear-probe,mirage",
        help="Comma-separated methods to train and compare "
        "(zero-shot, linear-probe, text-prompts, multimodal, "
        "discriminative, mirage, finetune).",
    ),
    steps: int = typer.Option(400, min=1, help="SGD steps per method."),
    seed: int = typer.Option(0),
) -> None:
    """Offline pipeline check: tiny random CLIP, synthetic images, train, evaluate, save."""
    from .config import canonical_method
    from .quickstart import run_quickstart

    try:
        chosen = tuple(canonical_method(m) for m in methods.split(",") if m.strip())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--methods") from exc
    warnings.filterwarnings("ignore", message="prompt depth")
    run_quickstart(output=output, methods=chosen, steps=steps, seed=seed, console=console)


@app.command()
def backbones() -> None:
    """List the named backbone shapes (random weights with `random:NAME`)."""
    from .backbone import PRESETS

    table = Table(
        title="Backbone presets: load as random:NAME (vision layers x width /patch @px; text)",
        box=box.SIMPLE,
    )
    for col in ("preset", "shape", "published weights"):
        table.add_column(col, no_wrap=True)
    for name, spec in PRESETS.items():
        v, t = spec["vision"], spec["text"]
        shape = (
            f"{v['num_hidden_layers']}x{v['hidden_size']} /{v['patch_size']} @{v['image_size']}; "
            f"{t['num_hidden_layers']}x{t['hidden_size']}"
        )
        table.add_row(name, shape, spec["hub"] or "-")
    console.print(table)


@app.command()
def info(checkpoint: Path = typer.Argument(..., help="A checkpoint directory.")) -> None:
    """Show what a checkpoint holds (method, classes, backbone, threshold, tensors)."""
    from .checkpoint import CheckpointError, read_config

    try:
        config = read_config(checkpoint)
    except CheckpointError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc
    console.print_json(
        json.dumps(
            {
                k: config[k]
                for k in (
                    "miragedet_version",
                    "model",
                    "loss",
                    "backbone",
                    "preprocess",
                    "threshold",
                    "tensors",
                )
            }
        )
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
