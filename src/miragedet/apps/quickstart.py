"""`miragedet quickstart`: the whole pipeline, offline, in about a minute on a CPU.

It builds the random-weight ``tiny`` CLIP, makes synthetic real/fake images (fakes carry a
grid-locked fingerprint), trains each requested method, evaluates on held-out images of the
training "generator" and of a fainter unseen one, prints a table and writes a checkpoint that it
reloads to prove the round trip. It is a pipeline check, not a detector of real images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..data.synthetic import SEEN, UNSEEN, make_set
from ..evaluation.metrics import binary_metrics
from ..model.backbone import load_backbone
from ..model.checkpoint import save_pretrained
from ..model.config import LossConfig, ModelConfig
from ..model.losses import MiraGeLoss
from ..model.mirage import MiraGe, load_pretrained
from ..training.config import OptimConfig
from ..training.step import fit_tensors, predict_fake_prob


@dataclass
class QuickstartResult:
    rows: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    round_trip_max_diff: float | None = None


def run_quickstart(
    output: str | Path = "miragedet-quickstart",
    methods: tuple[str, ...] = ("zero-shot", "linear-probe", "mirage"),
    n_train: int = 1000,
    n_test: int = 250,
    steps: int = 400,
    lr: float = 0.02,
    batch_size: int = 64,
    seed: int = 0,
    console: Console | None = None,
) -> QuickstartResult:
    console = console or Console()
    console.print(
        Panel.fit(
            "[bold]miragedet quickstart[/bold]: a pipeline check on a CLIP with [bold red]random "
            "weights[/bold red] and synthetic images.\nIt proves that training, evaluation and "
            "checkpoints work on this machine; it is [bold]not[/bold] a detector of real images.\n"
            "For that, train on a real backbone (e.g. openai/clip-vit-large-patch14).",
            border_style="yellow",
        )
    )
    torch.manual_seed(seed)
    backbone = load_backbone("tiny")
    size = backbone.preprocess.image_size
    console.print(f"backbone: {backbone.source} ({backbone.describe()})")
    start = time.perf_counter()
    train_images, train_labels = make_set(n_train, size, SEEN, seed=seed + 1)
    x_train = backbone.preprocess.batch(train_images)
    y_train = torch.tensor(train_labels)
    tests = {}
    for name, fingerprint, offset in (("seen", SEEN, 2), ("unseen", UNSEEN, 3)):
        images, labels = make_set(n_test, size, fingerprint, seed=seed + offset)
        tests[name] = (backbone.preprocess.batch(images), labels)
    console.print(
        f"data: {2 * n_train} training and {4 * n_test} held-out images made in "
        f"{time.perf_counter() - start:.1f} s"
    )

    result = QuickstartResult()
    last_model, last_loss = None, None
    for method in methods:
        config = ModelConfig.for_method(method, depth=2)
        model = MiraGe(backbone, config)
        loss_cfg = LossConfig.for_method(
            method, bank_size=min(256, LossConfig.for_method(method).bank_size)
        )
        loss_fn = MiraGeLoss(loss_cfg, backbone.model.config.projection_dim)
        start = time.perf_counter()
        _fit(model, loss_fn, x_train, y_train, OptimConfig(lr=lr, batch_size=batch_size), steps,
             seed, method, console)  # fmt: skip
        train_s = time.perf_counter() - start
        for subset, (x, labels) in tests.items():
            metrics = binary_metrics(labels, predict_fake_prob(model, x).numpy())
            result.rows.append({"method": method, "subset": subset, "train_s": train_s, **metrics})
        last_model, last_loss = model, loss_cfg

    console.print(_table(result.rows))

    if last_model is not None:
        directory = Path(output) / "checkpoint"
        save_pretrained(
            last_model,
            directory,
            loss_config=last_loss,
            metadata={"quickstart": True, "steps": steps, "lr": lr, "seed": seed},
        )
        _keep_memory(last_model, *tests["seen"], directory)
        reloaded = load_pretrained(directory)
        x = next(iter(tests.values()))[0][:64]
        with torch.inference_mode():
            last_model.eval()
            diff = (reloaded(x).logits - last_model(x).logits).abs().max().item()
        result.checkpoint, result.round_trip_max_diff = directory, diff
        console.print(f"checkpoint: {directory} (reloaded; max logit difference {diff:.1e})")
    console.print(
        "Next: `miragedet --help`. Real backbones load by hub id or local directory: "
        "`miragedet.load_backbone('openai/clip-vit-large-patch14')`."
    )
    return result


def _fit(model, loss_fn, x, y, optim: OptimConfig, steps: int, seed: int, method: str,
         console: Console) -> None:  # fmt: skip
    """Train ``model`` for ``steps`` steps on the tensors, with a progress bar (a method with
    nothing to train, zero-shot, is left as it is)."""
    if not any(p.requires_grad for p in model.parameters()):
        return
    with Progress(
        TextColumn(f"train {method:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.2f}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("train", total=steps, loss=float("nan"), acc=0.0)

        def on_step(step: int, r) -> None:
            progress.update(task, advance=1, loss=r.loss, acc=r.accuracy)

        fit_tensors(model, loss_fn, x, y, optim, steps, seed=seed, on_step=on_step)


def _table(rows: list[dict]) -> Table:
    """The held-out results, one row per method and test set."""
    table = Table(
        title="Held-out synthetic images, random-weight tiny CLIP (%)",
        caption=f"seen: the training fingerprint ({SEEN.name}, +-{SEEN.amplitude:g} "
        f"levels); unseen: a fainter one ({UNSEEN.name}, "
        f"+-{UNSEEN.amplitude:g})",
    )
    for col in ("method", "test", "acc", "real", "fake", "AP", "AUC", "train s"):
        table.add_column(
            col, justify="left" if col in ("method", "test") else "right", no_wrap=True
        )
    for row in rows:
        table.add_row(
            row["method"],
            row["subset"],
            f"{100 * row['accuracy']:.1f}",
            f"{100 * row['real_accuracy']:.1f}",
            f"{100 * row['fake_accuracy']:.1f}",
            f"{100 * row['ap']:.1f}",
            f"{100 * row['auc']:.1f}",
            f"{row['train_s']:.1f}",
        )
    return table


@torch.inference_mode()
def _keep_memory(model: Any, pixels: torch.Tensor, labels: Any, directory: Path) -> None:
    """The held-out seen images' feature memory beside the checkpoint, so that `miragedet adapt`
    on it guards what it knows without --old-data (miragedet.training.known)."""
    from ..training.adapt import MEMORY_NAME, Memory

    model.eval()
    features = model.adaptation_features(pixels)[1].float().cpu()
    empty = torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    memory = Memory(*empty, ["real"], model.backbone.fingerprint["weights"])
    memory = memory.add(features, ["real" if int(y) == 0 else SEEN.name for y in labels])
    memory.save(directory / MEMORY_NAME)
