"""Getting started: quickstart, doctor, the backbone presets, what a checkpoint holds."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from .common import (
    console,
)


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
    from ...model.config import canonical_method
    from ..quickstart import run_quickstart

    try:
        chosen = tuple(canonical_method(m) for m in methods.split(",") if m.strip())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--methods") from exc
    warnings.filterwarnings("ignore", message="prompt depth")
    run_quickstart(output=output, methods=chosen, steps=steps, seed=seed, console=console)


def doctor(
    backbone: str = typer.Option(
        "openai/clip-vit-large-patch14",
        "--backbone",
        help="The backbone you will train on: hub id or local folder.",
    ),
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="A checkpoint: measure (once, then cached) which engine --backend auto runs it on.",
    ),
) -> None:
    """What this machine can do and what is missing, with the line that fixes each.

    Exit status 0 when the main job can run (PyTorch works and the backbone can be loaded)."""
    import platform

    from ..._version import __version__
    from ..doctor import can_run, run_checks

    # the first line comes before the checks import torch and look for the backbone
    console.print(
        f"miragedet {__version__}, Python {platform.python_version()} on {platform.platform()}"
        f" ({os.cpu_count()} CPUs); checking PyTorch, the backbone and the optional parts..."
    )
    checks = run_checks(backbone, model)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("", "check", "found", "fix"):
        table.add_column(column, overflow="fold")
    for check in checks:
        mark = (
            "[green]ok[/green]"
            if check.ok
            else ("[red]no[/red]" if check.required else "[yellow]-[/yellow]")
        )
        table.add_row(
            mark, f"{check.group}: {escape(check.name)}", escape(check.found), escape(check.fix)
        )
    console.print(table)
    if can_run(checks):
        console.print("[green]ready[/green]: the main job can run on this machine")
        return
    console.print("[red]not ready[/red]: fix the rows marked 'no' (see 'fix')")
    raise typer.Exit(1)


def backbones() -> None:
    """List the named backbone shapes (random weights with `random:NAME`)."""
    from ...model.backbone import PRESETS

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


def info(checkpoint: Path = typer.Argument(..., help="A checkpoint directory.")) -> None:
    """Show what a checkpoint holds (method, classes, backbone, threshold, tensors, and the
    lineage of its few-shot adaptations)."""
    from ...model.checkpoint import CheckpointError, read_config

    try:
        config = read_config(checkpoint)
    except CheckpointError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
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
            | {"lineage": (config.get("metadata") or {}).get("lineage", [])}
        )
    )
