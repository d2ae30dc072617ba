"""miragedet train: options, the dry run's printout, the torchrun launch for --nproc."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from ...data.formats import summarize_skipped
from ...training.config import TRAIN, TrainConfig
from .common import console, duration, fail
from .options import config_options


@config_options(TrainConfig, TRAIN, argument="given", given_only=True)
def train(
    data: str = typer.Argument(None, help="Training data root (any layout) or manifest."),
    config: Path = typer.Option(
        None, "--config", "-c", help="YAML file of training options; flags given here override it."
    ),
    nproc: int = typer.Option(
        1,
        help="Train on N processes of this machine (one per GPU, or CPU processes with "
        "gloo) through torchrun; the same as `torchrun --nproc-per-node N -m miragedet train`.",
    ),
    temporal: bool = typer.Option(
        False,
        "--temporal",
        help="Clips: add a temporal head to the detector --model (trained on its frozen "
        "per-frame embeddings of DATA's clips, a label per clip); writes --output. See "
        "docs/video.md.",
    ),
    model: str = typer.Option(
        None, "--model", "-m", help="With --temporal: the checkpoint to extend."
    ),
    frames: int = typer.Option(None, "--frames", help="With --temporal: frames per clip (16)."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Check the data and the model, time a few real steps here, print the estimated "
        "time per epoch and in all, and peak memory; write nothing.",
    ),
    given: dict | None = None,
) -> None:
    """Train a detector (MiraGe or a baseline) on a data set; checkpoints go to OUTPUT.

    Every option below --dry-run is a TrainConfig field and a key of the --config file."""
    from ...model import distributed
    from ...training.trainer import Trainer

    if temporal:
        _train_temporal(data, model, given.get("output"), frames, given.get("seed"),
                        given.get("layout"))  # fmt: skip
        return
    if nproc > 1 and not distributed.env_from_launcher().enabled:
        raise typer.Exit(_launch_torchrun(nproc))
    if data is not None:
        given["data"] = data
    try:
        cfg = TrainConfig.from_yaml(config, **given) if config else TrainConfig.from_dict(given)
        if not cfg.data:
            raise ValueError("no training data: pass DATA or set `data:` in the --config file")
        if dry_run:
            _dry_run(Trainer(cfg, console=console))
            return
        result = Trainer(cfg, console=console).fit()
        distributed.shutdown(sync=True)  # the ranks end together (see distributed.shutdown)
    except (ValueError, OSError, ImportError) as exc:
        raise fail(exc) from exc
    finally:
        distributed.shutdown()
    if not distributed.env_from_launcher().is_main:
        return
    saved = [n for n in ("last", "best") if (Path(result.output) / n / "config.json").is_file()]
    where = " and ".join(f"{result.output}/{n}" for n in saved) or "none written"
    console.print(f"done: {result.global_step} steps; best {result.best}; checkpoints: {where}")


def _train_temporal(
    data: str | None,
    model: str | None,
    output: str | None,
    frames: int | None,
    seed: int | None,
    layout: str | None,
) -> None:
    from ...training.temporal import TemporalConfig, train_temporal

    try:
        if not (data and model and output):
            raise ValueError("--temporal needs DATA (clips), --model BASE and --output OUT")
        config = TemporalConfig(frames=frames or 16, seed=seed or 0)
        with console.status("computing the clips' frame embeddings and training the head"):
            report = train_temporal(model, data, output, config, layout=layout or "auto")
    except (ValueError, OSError) as exc:
        raise fail(exc) from exc
    console.print(
        f"temporal head on {report['clips']} clips: training accuracy "
        f"{100 * report['train_accuracy_frames']:.1f}% by frames alone, "
        f"{100 * report['train_accuracy_temporal']:.1f}% with the head -> {output}"
    )
    for path, reason in report["unreadable"]:
        console.print(f"[yellow]left out[/yellow] {escape(path)}: {escape(reason)}")


def _dry_run(trainer: Any) -> None:
    """Print what `train` would do: data, model, measured speed, estimates."""
    c, data = trainer.config, trainer.train_set
    console.print(
        f"[bold]data[/bold] {escape(str(data.root))}: layout {data.layout}, classes {data.classes}"
    )
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("split", "subset", *data.classes):
        table.add_column(column, justify="right" if column in data.classes else "left")
    for name, image_set in (("train", data), ("val", trainer.val_set)):
        for subset, counts in (image_set.counts() if image_set else {}).items():
            table.add_row(name, escape(subset), *[str(counts.get(k, 0)) for k in data.classes])
    console.print(table)
    if data.skipped:
        note = summarize_skipped(data.skipped)
        console.print(f"[yellow]{len(data.skipped)} files not used[/yellow] ({note}):")
        for path, reason in data.skipped[:20]:
            console.print(f"  {escape(path)}: {reason}", highlight=False)
    trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    console.print(
        f"[bold]model[/bold] {c.method} on {escape(trainer.backbone.describe())}: "
        f"{trained:,} trained parameters; batch {c.batch_size}, {c.epochs} epochs, "
        f"{trainer.steps_per_epoch} steps per epoch"
        + (
            f"; adversarial training {escape(c.adv_train)} on {c.adv_fraction:.0%} of each batch "
            "(included in the measured step)"
            if c.adv_train
            else ""
        )
    )
    report = trainer.dry_run()
    if report["skipped"] and len(report["skipped"]) > len(data.skipped):
        unread = report["skipped"][len(data.skipped) :]
        console.print(f"[yellow]{len(unread)} unreadable images met in the timed steps[/yellow]")
        for path, reason in unread[:20]:
            console.print(f"  {escape(path)}: {escape(reason)}", highlight=False)
    console.print(
        f"[bold]measured[/bold] on {report['device']}: {report['seconds_per_step']:.2f} s per step "
        f"({report['images_per_s']:.1f} images/s, {report['steps_timed']} steps after a warm-up)"
    )
    console.print(
        f"[bold]estimate[/bold] {duration(report['epoch_s'])} per epoch, "
        f"{duration(report['total_s'])} for {report['total_steps']} steps (training steps only; "
        f"validation adds one pass over the val set per epoch); peak memory "
        f"{report['peak_mib']:,.0f} MiB ({report['peak_kind']})"
    )
    if report["cached_features"]:
        console.print(
            "frozen image features: computed once (about one epoch's forward), then every epoch "
            "trains the head from them, so the whole run costs about that first pass"
        )
    console.print(f"nothing written ({escape(c.output)} untouched)")


def _launch_torchrun(nproc: int) -> int:
    """Re-run this very command under ``torchrun --standalone --nproc-per-node N``."""
    import subprocess
    import sys

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(nproc), "-m", "miragedet", *args]
    console.print(f"launching {nproc} processes: torchrun --nproc-per-node {nproc} ...")
    return subprocess.call(command)
