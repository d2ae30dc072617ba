"""miragedet adapt: a new generator learned from a few images, forgetting measured and guarded."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from .common import console, fail

#: As train's --device (training.config.TrainConfig.device).
DEVICE_HELP = "auto (a CUDA GPU when present, else the CPU), cpu, cuda, cuda:N."


def adapt(
    data: str = typer.Argument(..., help="Images of the new generator and reals (any layout)."),
    model: str = typer.Option(..., "--model", "-m", help="The checkpoint to adapt."),
    output: Path = typer.Option(..., "--output", "-o", help="Where the adapted checkpoint goes."),
    shots: int = typer.Option(16, help="Images per class drawn from DATA (seeded)."),
    mode: str = typer.Option(
        "prototype",
        help="prototype (no gradient, seconds; the default, chosen by measurement) or prompt "
        "(prompts tuned with replay + distillation). See docs/adapt.md.",
    ),
    old_data: str = typer.Option(
        None,
        help="Held-out images of the classes the model knows: the forgetting is measured on "
        "them and they become the feature memory. Default: the memory an earlier adaptation "
        "stored.",
    ),
    name: str = typer.Option(None, help="The new generator's name (default: DATA's)."),
    seed: int = typer.Option(0, help="Seed of the shot draw."),
    max_forgetting: float = typer.Option(
        1.0, help="Accuracy points the old data may lose; beyond, nothing is saved."
    ),
    force: bool = typer.Option(False, help="Save even past --max-forgetting."),
    layout: str = typer.Option("auto"),
    split: str = typer.Option("train", help="DATA's split, where its layout has one."),
    old_split: str = typer.Option("val", help="--old-data's split, where its layout has one."),
    memory: int = typer.Option(256, help="Known images per source kept as the feature memory."),
    held_out: int = typer.Option(200, help="Images per source scored before and after."),
    fpr_budget: float = typer.Option(
        0.005, help="Share of known reals an adapter may newly call fake (prototype mode)."
    ),
    unknown_rate: float = typer.Option(
        0.05, help="Attribution: share of held-out known images the open-set test may flag."
    ),
    steps: int = typer.Option(100, help="Prompt mode: optimisation steps."),
    lr: float = typer.Option(0.02, help="Prompt mode: learning rate."),
    batch_size: int = typer.Option(64),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Teach a detector a new generator from a few images, without forgetting (docs/adapt.md)."""
    from ...training.adapt import AdaptConfig
    from ...training.adapt import adapt as run

    try:
        config = AdaptConfig(
            shots=shots, mode=mode, seed=seed, name=name, layout=layout, split=split or None,
            old_data=old_data, old_split=old_split or None, memory=memory, held_out=held_out,
            max_forgetting=max_forgetting, force=force, fpr_budget=fpr_budget,
            unknown_rate=unknown_rate, steps=steps, lr=lr, batch_size=batch_size, device=device,
        )  # fmt: skip
        result = run(model, data, output, config, on_stage=lambda text: console.print(text))
    except (ValueError, OSError) as exc:
        raise fail(exc) from exc
    table = Table(box=box.SIMPLE_HEAD, title="accuracy (%) before -> after")
    for column in ("held-out data", "images", "accuracy", "real", "fake"):
        table.add_column(column, justify="left" if column == "held-out data" else "right")
    for row in result.table:
        b, a = row["before"], row["after"]

        def cell(key: str, b: dict = b, a: dict = a) -> str:
            if not b:
                return "-"
            return f"{100 * b[key]:.1f} -> {100 * a[key]:.1f}"

        table.add_row(
            escape(row["data"]), str(row["n"]), cell("accuracy"), cell("real"), cell("fake")
        )
    console.print(table)
    for path, reason in result.skipped[:20]:
        console.print(f"  skipped {escape(path)}: {escape(reason)}", highlight=False)
    if result.forgetting is not None:
        console.print(
            f"forgetting on the old data: {result.forgetting:+.1f} points "
            f"(--max-forgetting {max_forgetting:g})"
        )
    if not result.saved:
        console.print(
            f"[red]not saved:[/red] the old data lost more than {max_forgetting:g} points; "
            "nothing was written (--force saves it anyway)"
        )
        raise typer.Exit(1)
    console.print(f"adapted checkpoint in {escape(str(output))} (lineage: miragedet info)")


def continual(
    tasks: list[str] = typer.Argument(
        ..., help="The base model's own task, then the new generators' data, in order."
    ),
    model: str = typer.Option(..., "--model", "-m", help="The checkpoint trained on TASK 1."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for each step and the report."),
    shots: int = typer.Option(16, help="Images per class drawn from each new task (seeded)."),
    mode: str = typer.Option("prototype", help="prototype or prompt (see `adapt`)."),
    seed: int = typer.Option(0),
    layout: str = typer.Option("auto"),
    split: str = typer.Option("train", help="New tasks' split, where the layout has one."),
    old_split: str = typer.Option("val", help="The base task's split, where it has one."),
    held_out: int = typer.Option(200, help="Images per source each task is scored on."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Learn generators one after another; CDDB's average accuracy and forgetting per step."""
    from ...training.adapt import AdaptConfig
    from ...training.continual import continual as run

    try:
        config = AdaptConfig(
            shots=shots, mode=mode, seed=seed, layout=layout, split=split or None,
            old_split=old_split or None, held_out=held_out, device=device,
        )  # fmt: skip
        report = run(model, tasks, output, config, on_stage=lambda text: console.print(text))
    except (ValueError, OSError) as exc:
        raise fail(exc) from exc
    table = Table(box=box.SIMPLE_HEAD, title="accuracy (%) on each task after each step")
    names = [Path(t).name for t in tasks]
    for column in ("after", *names, "avg acc", "avg forgetting"):
        table.add_column(escape(column), justify="left" if column == "after" else "right")
    from ...training.continual import metrics

    for step, row in enumerate(report["accuracy"]):
        m = metrics(report["accuracy"][: step + 1])
        cells = [f"{100 * a:.1f}" for a in row] + ["-"] * (len(tasks) - len(row))
        table.add_row(
            escape(names[step]), *cells, f"{m['average_accuracy']:.1f}",
            f"{m['average_forgetting']:.1f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"report and checkpoints in {escape(str(output))}")
