"""miragedet evaluate, calibrate and analyze: a model measured on labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from ...data.formats import summarize_skipped
from .common import (
    AGGREGATE_HELP,
    BACKEND_HELP,
    DEVICE_HELP,
    MAX_TILES_HELP,
    PRECISION_HELP,
    VIEW_HELP,
    console,
    csv_list,
    duration,
    fail,
    load_model,
    run_or_checkpoint,
    view_options,
)

#: evaluate's batch size off a GPU (its long-standing default; on a GPU: from free memory).
EVALUATE_BATCH = 64


def evaluate(
    model: str = typer.Option(
        ..., "--model", "-m", help="Checkpoint directory, or zero-shot:BACKBONE for untrained CLIP."
    ),
    data: str = typer.Argument(..., help="Test data root (any layout) or manifest."),
    output: Path = typer.Option(Path("eval"), "--output", "-o"),
    layout: str = typer.Option("auto"),
    split: str = typer.Option("val", help="GenImage split to test on."),
    subsets: str = typer.Option(None, help="Comma-separated subsets (default: all)."),
    degrade: list[str] = typer.Option(
        None,
        help="Degradations KIND:VALUE (jpeg:65, blur:3, "
        "downsample:112, noise:5) or 'paper'; repeatable.",
    ),
    protocol: str = typer.Option(None, help="genimage|ufd|chameleon: show the paper's row."),
    align: str = typer.Option(
        None,
        help="Also score every image re-encoded alike (jpeg:96 or "
        "png) and show both; see `miragedet audit-data`.",
    ),
    threshold: float = typer.Option(None, help="Default: the checkpoint's."),
    batch_size: int = typer.Option(
        None, "--batch-size", help="Images per forward (default 64; on a GPU from its free memory)."
    ),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    workers: int = typer.Option(
        None,
        help="Decode threads of the resize view (default: the CPUs this process may use, 2 to 8; "
        "up to 32 when a GPU scores); DataLoader processes of the tiles view and the feature "
        "cache (default 2).",
    ),
    precision: str = typer.Option("auto", help=PRECISION_HELP + " fp32 for the paper's numbers."),
    backend: str = typer.Option(None, help=BACKEND_HELP),
    view: str = typer.Option(None, help=VIEW_HELP),
    max_tiles: int = typer.Option(None, help=MAX_TILES_HELP),
    aggregate: str = typer.Option(None, help=AGGREGATE_HELP),
    attack: list[str] = typer.Option(
        None,
        help="White-box attack on the detector, e.g. fgsm:eps=2, pgd:eps=4,steps=10, "
        "pgd:eps=4,steps=10,target=real (eps in grey levels); 'sweep' for FGSM and targeted PGD "
        "at 1, 2, 4, 8; repeatable. Writes adversarial.md/.csv/.json/.png. Needs "
        "miragedet[attacks].",
    ),
    attack_max: int = typer.Option(100, help="Images attacked per subset (a seeded sample)."),
    unknown_data: str = typer.Option(
        None,
        help="Adapted attribution models: images of generators the model does not know, for the "
        "open-set report (unknown rate per class, AUROC). See docs/adapt.md.",
    ),
    attack_survival: str = typer.Option(
        "jpeg:90,jpeg:75,scale:0.5",
        help="Re-encodings the adversarial images must survive (degradation specs).",
    ),
    attack_batch: int = typer.Option(8, help="Images attacked together."),
    attack_stability: bool = typer.Option(
        True, help="Measure how many successful attacks --stability would mark uncertain."
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Check the data, time a few batches here, print the estimated time; write nothing.",
    ),
) -> None:
    """Evaluate a detector: per-subset metrics, tables, ROC/PR plots, per-image scores."""
    from ...data.degrade import Alignment, parse_degradations
    from ...data.layouts import find_images
    from ...evaluation.evaluate import evaluate_dataset
    from ...inference.attacks import parse_attacks, require_art

    try:
        attacks = parse_attacks(attack or [])
        if attacks:
            require_art()
        degradations = parse_degradations(degrade or [])
        passes = 1 + len(degradations) + bool(align)
        image_set = None if dry_run else find_images(data, layout, split=split)
        if image_set is not None and csv_list(subsets):
            image_set = image_set.only(csv_list(subsets))
        images = len(image_set.samples) * passes if image_set is not None else 0
        detector, attack_model, batch_size = _placed(
            model, device, precision, backend, bool(attacks),
            view_options(view, max_tiles, aggregate), batch_size, images,
        )  # fmt: skip
        if dry_run:
            _evaluate_dry_run(detector, data, passes=passes, layout=layout, split=split,
                              subsets=csv_list(subsets), batch_size=batch_size, workers=workers,
                              view=view_options(view, max_tiles, aggregate))  # fmt: skip
            return
        metrics = evaluate_dataset(
            detector,
            image_set,
            output,
            layout=layout,
            split=split,
            subsets=csv_list(subsets),
            degradations=degradations,
            protocol=protocol,
            threshold=threshold,
            batch_size=batch_size,
            workers=workers,
            console=console,
            align=Alignment.parse(align) if align else None,
            view=view_options(view, max_tiles, aggregate),
            attacks=attacks,
            attack_model=attack_model,
            attack_options={
                "max_per_subset": attack_max,
                "survival": csv_list(attack_survival) or [],
                "attack_batch": attack_batch,
                "stability": attack_stability,
            },
            unknown_data=unknown_data,
        )
    except (ValueError, OSError, ImportError) as exc:
        raise fail(exc) from exc
    _print_report(metrics, output)


def _print_report(metrics: dict[str, Any], output: Path) -> None:
    """The table, the skipped files' count and where the report went."""
    from ...evaluation.report import markdown_table

    console.print(
        markdown_table(metrics["clean"], paper=metrics["paper"]), soft_wrap=True, markup=False
    )
    if metrics["skipped"]:
        console.print(f"[yellow]{len(metrics['skipped'])} files skipped[/yellow] (see report)")
    console.print(
        f"report: {output / 'report.md'} (+ metrics.json, table.csv, scores.csv, roc_pr.png)"
        + (", adversarial.md" if metrics.get("adversarial") else "")
    )


def _placed(model: str, device: str, precision: str, backend: str | None, attacked: bool,
            view: Any, batch_size: int | None, images: int) -> tuple[Any, Any, int]:  # fmt: skip
    """The model to score with, cast to its precision and placed on its engine (the header line
    says which), the fp32 PyTorch model attacks take their gradients from (or None), and the
    batch size (as asked; else 64, or on a GPU from its free memory)."""
    import copy

    from ...inference.engine import engine_text
    from ...inference.engine_model import place
    from ...inference.pipeline import batch_for
    from ...inference.precision import apply, resolve
    from ...model.checkpoint import resolve as resolve_checkpoint
    from ...model.device import describe, enable_tf32

    if not model.startswith("zero-shot:"):
        model = run_or_checkpoint(model, lambda m: console.print(f"[dim]{escape(m)}[/dim]"))
    checkpoint = None if model.startswith("zero-shot:") else resolve_checkpoint(model)
    detector = load_model(model if checkpoint is None else str(checkpoint), device)
    scoring_device = detector.clip.logit_scale.device
    choice = resolve(precision, scoring_device)
    tf32 = enable_tf32(scoring_device) if choice.precision == "fp32" else None
    # attacks take their gradients in fp32 (the strongest attacker), the scores come from the
    # detector as it runs
    attack_model = copy.deepcopy(detector) if attacked and choice.precision != "fp32" else None
    detector = apply(detector, choice.precision)  # cast once, as the Detector does
    size = detector.backbone.preprocess.image_size
    batch_size, batch_why = batch_for(detector, scoring_device, size, batch_size, EVALUATE_BATCH)
    placed = place(
        detector,
        checkpoint,
        backend,
        precision,
        view=view,
        batch_size=batch_size,
        notify=lambda message: console.print(f"[dim]{escape(message)}[/dim]"),
        images=images,
        device_named=device not in (None, "auto"),
    )
    if placed.backend != "torch":  # gradients (attacks) still come from eager PyTorch
        attack_model = attack_model or (detector if attacked else None)
        detector = placed.model
    why = "ONNX Runtime graph" if placed.backend == "onnx" else choice.reason
    engine = engine_text(placed.backend, placed.reason, placed.measured)
    where = describe(scoring_device) + (f", {tf32}" if tf32 else "")
    console.print(
        f"[dim]precision {placed.precision} ({escape(why)}); engine {escape(engine)}; "
        f"on {escape(where)}; batch {batch_size}"
        + (f" ({escape(batch_why)})" if batch_why not in ("as asked", "default") else "")
        + "[/dim]"
    )
    return detector, attack_model, batch_size


def _evaluate_dry_run(model: Any, data: str, passes: int, **kwargs: Any) -> None:
    """Print what `evaluate` would score and how long it would take here; write nothing."""
    from ...evaluation.evaluate import dry_run

    report = dry_run(model, data, passes=passes, **kwargs)
    image_set = report["image_set"]
    console.print(
        f"[bold]data[/bold] {escape(str(image_set.root))}: layout {image_set.layout}, "
        f"classes {image_set.classes}"
    )
    for subset, counts in image_set.counts().items():
        console.print(f"  {escape(subset)}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if image_set.skipped:
        console.print(f"[yellow]{summarize_skipped(image_set.skipped)}[/yellow]")
    console.print(
        f"[bold]measured[/bold] {1000 * report['seconds_per_image']:.1f} ms per image (decode + "
        f"forward, batch {report['batch_size']}); [bold]estimate[/bold] "
        f"{duration(report['total_s'])} for {len(image_set.samples)} images x {passes} pass(es) "
        "(clean, degradations, alignment)"
    )
    if report["unreadable"]:
        console.print(
            f"[yellow]{report['unreadable']} unreadable images in the timed batches[/yellow]"
        )
    console.print("nothing written")


def calibrate(
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint directory to update."),
    data: str = typer.Argument(..., help="Held-out data; only its real images are used."),
    fpr: float = typer.Option(0.05, help="Target false-positive rate on real images."),
    layout: str = typer.Option("auto"),
    split: str = typer.Option("val"),
    dry_run: bool = typer.Option(False, help="Report the threshold without saving it."),
    view: str = typer.Option(None, help=VIEW_HELP + " Calibrate with the view you score with."),
    max_tiles: int = typer.Option(None, help=MAX_TILES_HELP),
    aggregate: str = typer.Option(None, help=AGGREGATE_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP + " The model scores in fp32."),
    workers: int = typer.Option(
        None,
        help="Decode threads of the resize view (default: the CPUs this process may use, 2 to "
        "8; up to 32 when a GPU scores); DataLoader processes of the tiles view (default 2).",
    ),
) -> None:
    """Set the checkpoint's threshold so that at most FPR of held-out reals are called fake."""
    from ...evaluation.calibrate import calibrate_checkpoint

    try:
        result = calibrate_checkpoint(
            load_model(str(model), device),
            model,
            data,
            fpr,
            layout=layout,
            split=split,
            view=view_options(view, max_tiles, aggregate),
            save=not dry_run,
            workers=workers,
        )
    except (ValueError, OSError) as exc:
        raise fail(exc) from exc
    console.print(
        f"threshold {result['threshold']:.6g}: {result['achieved_fpr']:.2%} of "
        f"{result['n_real']} real images called fake "
        f"(target {fpr:.2%})" + ("" if dry_run else f"; saved to {model}")
    )


def analyze(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint directory."),
    data: str = typer.Option(..., "--data", "-d", help="Data root (any layout) or manifest."),
    compare: list[str] = typer.Option(
        None,
        help="More models to show side by side: checkpoint "
        "dirs, zero-shot (the same backbone untrained) or "
        "zero-shot:BACKBONE; repeatable.",
    ),
    output: Path = typer.Option(Path("analysis"), "--output", "-o"),
    layout: str = typer.Option("auto"),
    split: str = typer.Option("val"),
    max_points: int = typer.Option(2000, help="t-SNE on a seeded sample of at most this many."),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    workers: int = typer.Option(2),
) -> None:
    """Intra-class variation and inter-class separation around the text anchors, and a t-SNE map
    (the paper's section 4 analysis), for one model or several side by side."""
    from ...evaluation.analyze import analyze as run_analysis

    try:
        first = load_model(model, device)
        first.name = Path(model).name if not model.startswith("zero-shot") else model
        models = [first]
        for spec in compare or []:
            if spec == "zero-shot":
                spec = f"zero-shot:{first.backbone.source}"
            other = load_model(spec, device)
            other.name = spec if spec.startswith("zero-shot") else Path(spec).name
            models.append(other)
        summary = run_analysis(
            models,
            data,
            output,
            layout=layout,
            split=split,
            max_points=max_points,
            seed=seed,
            batch_size=batch_size,
            workers=workers,
        )
    except (ValueError, OSError) as exc:
        raise fail(exc) from exc
    console.print((output / "analysis.md").read_text(), markup=False, soft_wrap=True)
    console.print(
        f"wrote {output}/analysis.md, analysis.csv, analysis.json, tsne.png, tsne.csv "
        f"({summary['tsne_points']} images in the map)"
    )
