"""The `miragedet` command: a thin shell over the library (no logic of its own)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .data.formats import summarize_skipped

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


def _view_options(view: str | None, max_tiles: int | None, aggregate: str | None) -> dict | None:
    """What the view options ask for (a missing kind: the checkpoint's; see views.resolve)."""
    options = {"kind": view, "max_tiles": max_tiles, "aggregate": aggregate}
    return options if any(v is not None for v in options.values()) else None


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
def doctor(
    backbone: str = typer.Option(
        "openai/clip-vit-large-patch14",
        "--backbone",
        help="The backbone you will train on: hub id or local folder.",
    ),
) -> None:
    """What this machine can do and what is missing, with the line that fixes each.

    Exit status 0 when the main job can run (PyTorch works and the backbone can be loaded)."""
    from .doctor import can_run, run_checks

    checks = run_checks(backbone)
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


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(2)


def _csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@app.command()
def train(
    data: str = typer.Argument(None, help="Training data root (any layout) or manifest."),
    config: Path = typer.Option(
        None, "--config", "-c", help="YAML file of training options; flags given here override it."
    ),
    layout: str = typer.Option(None, help="auto|genimage|ufd|chameleon|generic|manifest"),
    subsets: str = typer.Option(
        None, help="Comma-separated subsets to train on (e.g. stable_diffusion_v_1_4)."
    ),
    val_data: str = typer.Option(None, help="Validation root (default: the val split, if any)."),
    max_per_class: int = typer.Option(None, help="Cap on training images per class."),
    classes: str = typer.Option(None, help="Comma-separated prompt class names."),
    method: str = typer.Option(
        None,
        help="zero-shot|linear-probe|text-prompts|multimodal|"
        "discriminative|mirage|finetune (default mirage)",
    ),
    backbone: str = typer.Option(
        None, help="Hub id, local dir or random:PRESET (default openai/clip-vit-large-patch14)."
    ),
    n_ctx: int = typer.Option(None),
    depth: int = typer.Option(None),
    finetune_blocks: int = typer.Option(None),
    template: str = typer.Option(None),
    lambda_dis: float = typer.Option(None),
    tau: float = typer.Option(None),
    bank_size: int = typer.Option(None),
    lr: float = typer.Option(None, help="Default 0.002 (paper)."),
    momentum: float = typer.Option(None),
    weight_decay: float = typer.Option(None),
    batch_size: int = typer.Option(None, help="Default 128 (paper)."),
    grad_accum: int = typer.Option(None),
    epochs: int = typer.Option(None),
    warmup_steps: int = typer.Option(None),
    max_steps: int = typer.Option(None),
    amp: str = typer.Option(None, help="none|bf16|fp16"),
    augment: str = typer.Option(None, help="none|robust"),
    view: str = typer.Option(
        None,
        help="resize (CLIP's resize + centre crop, the paper's) or crop (random crops at "
        "native resolution: keeps pixel-level traces; the checkpoint then scores with tiles).",
    ),
    align: str = typer.Option(None, help="Re-encode every training image alike: jpeg:96 or png."),
    workers: int = typer.Option(None),
    seed: int = typer.Option(None),
    device: str = typer.Option(None),
    output: str = typer.Option(None, "--output", "-o"),
    log_every: int = typer.Option(None),
    save_every: int = typer.Option(None),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT/last."),
    nproc: int = typer.Option(
        1,
        help="Train on N processes of this machine (one per GPU, or CPU processes with "
        "gloo) through torchrun; the same as `torchrun --nproc-per-node N -m miragedet train`.",
    ),
    cache_features: bool = typer.Option(
        None,
        "--cache-features/--no-cache-features",
        help="Compute frozen image features once (linear-probe, zero-shot, text-prompts without "
        "augmentation); default on.",
    ),
    adv_train: str = typer.Option(
        None,
        help="Adversarial training of the prompts (backbone frozen): an attack spec such as "
        "pgd:eps=2,steps=5 (eps in grey levels of the model's input crops). Needs "
        "miragedet[attacks].",
    ),
    adv_fraction: float = typer.Option(
        None, help="With --adv-train: share of each batch replaced by attacks (default 0.5)."
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Check the data and the model, time a few real steps here, print the estimated "
        "time per epoch and in all, and peak memory; write nothing.",
    ),
) -> None:
    """Train a detector (MiraGe or a baseline) on a data set; checkpoints go to OUTPUT."""
    from . import distributed
    from .train import TrainConfig, Trainer

    if nproc > 1 and not distributed.env_from_launcher().enabled:
        raise typer.Exit(_launch_torchrun(nproc))

    given = {
        k: v
        for k, v in dict(
            data=data,
            layout=layout,
            subsets=_csv_list(subsets),
            val_data=val_data,
            max_per_class=max_per_class,
            classes=_csv_list(classes),
            method=method,
            backbone=backbone,
            n_ctx=n_ctx,
            depth=depth,
            finetune_blocks=finetune_blocks,
            template=template,
            lambda_dis=lambda_dis,
            tau=tau,
            bank_size=bank_size,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            batch_size=batch_size,
            grad_accum=grad_accum,
            epochs=epochs,
            warmup_steps=warmup_steps,
            max_steps=max_steps,
            amp=amp,
            augment=augment,
            view=view,
            align=align,
            workers=workers,
            seed=seed,
            device=device,
            output=output,
            log_every=log_every,
            save_every=save_every,
            cache_features=cache_features,
            adv_train=adv_train,
            adv_fraction=adv_fraction,
        ).items()
        if v is not None
    }
    if resume:
        given["resume"] = True
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
        raise _fail(exc) from exc
    finally:
        distributed.shutdown()
    if not distributed.env_from_launcher().is_main:
        return
    console.print(
        f"done: {result.global_step} steps; best {result.best}; "
        f"checkpoints in {result.output}/last and /best"
    )


def _duration(seconds: float) -> str:
    if seconds != seconds:  # nan: nothing was timed
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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
        f"[bold]estimate[/bold] {_duration(report['epoch_s'])} per epoch, "
        f"{_duration(report['total_s'])} for {report['total_steps']} steps (training steps only; "
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


@app.command()
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
    batch_size: int = typer.Option(64),
    workers: int = typer.Option(2),
    precision: str = typer.Option("auto", help=PRECISION_HELP + " fp32 for the paper's numbers."),
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
    import copy

    from .attacks import parse_attacks, require_art
    from .data.degrade import Alignment, parse_degradations
    from .evaluate import evaluate_dataset, markdown_table
    from .precision import apply, resolve

    try:
        attacks = parse_attacks(attack or [])
        if attacks:
            require_art()
        detector = _load_model(model)
        choice = resolve(precision, detector.clip.logit_scale.device)
        # attacks take their gradients in fp32 (the strongest attacker), the scores come from
        # the detector as it runs
        attack_model = copy.deepcopy(detector) if attacks and choice.precision != "fp32" else None
        detector = apply(detector, choice.precision)  # cast once, as the Detector does
        console.print(f"[dim]precision {choice.precision} ({escape(choice.reason)})[/dim]")
        degradations = parse_degradations(degrade or [])
        if dry_run:
            _evaluate_dry_run(
                detector,
                data,
                passes=1 + len(degradations) + bool(align),
                layout=layout,
                split=split,
                subsets=_csv_list(subsets),
                batch_size=batch_size,
                workers=workers,
                view=_view_options(view, max_tiles, aggregate),
            )
            return
        metrics = evaluate_dataset(
            detector,
            data,
            output,
            layout=layout,
            split=split,
            subsets=_csv_list(subsets),
            degradations=degradations,
            protocol=protocol,
            threshold=threshold,
            batch_size=batch_size,
            workers=workers,
            console=console,
            align=Alignment.parse(align) if align else None,
            view=_view_options(view, max_tiles, aggregate),
            attacks=attacks,
            attack_model=attack_model,
            attack_options={
                "max_per_subset": attack_max,
                "survival": _csv_list(attack_survival) or [],
                "attack_batch": attack_batch,
                "stability": attack_stability,
            },
        )
    except (ValueError, OSError, ImportError) as exc:
        raise _fail(exc) from exc
    console.print(
        markdown_table(metrics["clean"], paper=metrics["paper"]), soft_wrap=True, markup=False
    )
    if metrics["skipped"]:
        console.print(f"[yellow]{len(metrics['skipped'])} files skipped[/yellow] (see report)")
    console.print(
        f"report: {output / 'report.md'} (+ metrics.json, table.csv, scores.csv, roc_pr.png)"
        + (", adversarial.md" if metrics.get("adversarial") else "")
    )


def _evaluate_dry_run(model: Any, data: str, passes: int, **kwargs: Any) -> None:
    """Print what `evaluate` would score and how long it would take here; write nothing."""
    from .evaluate import dry_run

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
        f"{_duration(report['total_s'])} for {len(image_set.samples)} images x {passes} pass(es) "
        "(clean, degradations, alignment)"
    )
    if report["unreadable"]:
        console.print(
            f"[yellow]{report['unreadable']} unreadable images in the timed batches[/yellow]"
        )
    console.print("nothing written")


def _load_model(spec: str):
    from .backbone import load_backbone
    from .checkpoint import load_pretrained
    from .config import ModelConfig
    from .model import MiraGe

    if spec.startswith("zero-shot:"):
        return MiraGe(
            load_backbone(spec.removeprefix("zero-shot:")), ModelConfig.for_method("zero-shot")
        )
    return load_pretrained(spec)


@app.command()
def detect(
    inputs: list[str] = typer.Argument(
        ..., help="Image files, folders (recursive), globs, or - for paths on stdin."
    ),
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint directory or hub id."),
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
    backend: str = typer.Option(
        "torch",
        help="torch, or onnx: the checkpoint's model.onnx "
        "(see `miragedet export`) on ONNX Runtime.",
    ),
    threshold: float = typer.Option(None, help="Default: the checkpoint's threshold."),
    batch_size: int = typer.Option(32),
    threads: int = typer.Option(4, help="Decode threads."),
    device: str = typer.Option(None),
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
) -> None:
    """Score images. Exit status: 0 all scored, 1 some inputs could not be read, 2 usage error.

    Folders are walked for images by content (any extension or none); what else they hold is
    counted in the summary and named with --list-skipped."""
    import sys

    from .detect import discover, run_detect
    from .detector import load_detector
    from .stability import Stability

    try:
        detector = load_detector(
            model,
            backend,
            threshold=threshold,
            batch_size=batch_size,
            decode_threads=threads,
            device=device,
            precision=precision,
            draft=not exact_decode,
            view=_view_options(view, max_tiles, aggregate),
        )
        if trust_anchors is not None:
            from .provenance import load_trust_anchors

            detector.trust_anchors = load_trust_anchors(trust_anchors)
        detector.watermarks = watermarks
        if where is not None and detector.view.kind == "resize":
            raise ValueError("--where draws tiles: use it with --view tiles (or crop)")
        Console(stderr=True).print(
            f"[dim]{escape(model)}: {detector.precision} "
            f"({escape(detector.precision_reason)})[/dim]",
            highlight=False,
        )
        found = discover(inputs, sys.stdin)
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
        )
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc
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


def _list_skipped(err: Console, skipped: list[tuple[str, str]], requested: bool) -> None:
    if requested:
        for path, reason in skipped:
            err.print(f"skipped  {escape(path)}: {reason}", highlight=False)
    elif skipped:
        err.print("[dim](--list-skipped names them)[/dim]")


@app.command("score-dataset")
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
    gpus_per_worker: float = typer.Option(0.0, help="e.g. 1 for one GPU per actor."),
    address: str = typer.Option(
        None, help="Ray cluster to join (auto, ray://host:10001); default: a local Ray."
    ),
    batch_size: int = typer.Option(32),
    shard_size: int = typer.Option(1000, help="Inputs per Parquet shard (the unit of resume)."),
    backend: str = typer.Option("torch", help="torch, or onnx (the checkpoint's model.onnx)."),
    threshold: float = typer.Option(None, help="Default: the checkpoint's threshold."),
    device: str = typer.Option(None),
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
) -> None:
    """Score a large collection into Parquet shards; rerun the same command to resume.

    Exit status: 0 all scored, 1 some inputs could not be read (error rows), 2 usage error."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from .scoring import score_dataset as run

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
                view=_view_options(view, max_tiles, aggregate),
                cpus_per_worker=cpus_per_worker,
                gpus_per_worker=gpus_per_worker,
                address=address,
                on_start=on_start,
                on_rows=lambda n: progress.update(task, advance=n),
            )
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc
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


@app.command()
def serve(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint directory or hub id."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    max_batch: int = typer.Option(16, help="Images per model forward."),
    max_wait_ms: float = typer.Option(10.0, help="How long a batch waits to fill."),
    max_queue: int = typer.Option(256, help="Images waiting before 503 + Retry-After."),
    max_body_mb: float = typer.Option(32.0),
    max_pixels: int = typer.Option(40_000_000),
    max_images: int = typer.Option(64, help="Images per request."),
    api_key: str = typer.Option(
        None, envvar="MIRAGEDET_API_KEY", help="Require this key (X-API-Key or Bearer)."
    ),
    cors: str = typer.Option(None, help="Comma-separated allowed origins."),
    threshold: float = typer.Option(None),
    device: str = typer.Option(None),
    provenance: bool = typer.Option(
        True, help="Report C2PA, XMP, generator parameters and EXIF; weigh them in the verdict."
    ),
    trust_anchors: Path = typer.Option(
        None, help="PEM file of trusted C2PA signers (see detect --help)."
    ),
    watermarks: bool = typer.Option(False, help="Also look for generators' invisible watermarks."),
    backend: str = typer.Option("torch", help="torch, or onnx (the checkpoint's model.onnx)."),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    view: str = typer.Option(
        None, help=VIEW_HELP + " A request may ask for another (?view=tiles&max_tiles=16)."
    ),
    max_tiles: int = typer.Option(None, help=MAX_TILES_HELP),
    aggregate: str = typer.Option(None, help=AGGREGATE_HELP),
    max_tiles_limit: int = typer.Option(64, help="The most tiles a request may ask for."),
    log_level: str = typer.Option("info"),
) -> None:
    """Serve the detector over HTTP (POST /v1/detect) with a web page at /."""
    from .server import ServerSettings
    from .server import serve as run_server
    from .views import resolve

    options = _view_options(view, max_tiles, aggregate)
    try:  # checked here, before the model loads in the background
        if options is not None:
            resolve(options, "resize")
    except ValueError as exc:
        raise _fail(exc) from exc

    settings = ServerSettings(
        model=model,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_body_mb=max_body_mb,
        max_pixels=max_pixels,
        max_images=max_images,
        api_key=api_key,
        cors_origins=_csv_list(cors) or [],
        threshold=threshold,
        device=device,
        provenance=provenance,
        trust_anchors=_trust(trust_anchors),
        watermarks=watermarks,
        backend=backend,
        precision=precision,
        view=options,
        max_tiles_limit=max_tiles_limit,
    )
    console.print(f"serving {model} on http://{host}:{port} (web page /, API docs /docs)")
    run_server(settings, host=host, port=port, log_level=log_level)


def _trust(path: Path | None) -> str | None:
    from .provenance import load_trust_anchors

    try:
        return load_trust_anchors(path) if path is not None else None
    except (OSError, ValueError) as exc:
        raise _fail(exc) from exc


@app.command()
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
    batch_size: int = typer.Option(64),
    workers: int = typer.Option(2),
) -> None:
    """Intra-class variation and inter-class separation around the text anchors, and a t-SNE map
    (the paper's section 4 analysis), for one model or several side by side."""
    from .analyze import analyze as run_analysis

    try:
        first = _load_model(model)
        first.name = Path(model).name if not model.startswith("zero-shot") else model
        models = [first]
        for spec in compare or []:
            if spec == "zero-shot":
                spec = f"zero-shot:{first.backbone.source}"
            other = _load_model(spec)
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
        raise _fail(exc) from exc
    console.print((output / "analysis.md").read_text(), markup=False, soft_wrap=True)
    console.print(
        f"wrote {output}/analysis.md, analysis.csv, analysis.json, tsne.png, tsne.csv "
        f"({summary['tsne_points']} images in the map)"
    )


@app.command("audit-data")
def audit_data(
    data: str = typer.Argument(..., help="Data root (any layout) or manifest."),
    output: Path = typer.Option(Path("audit"), "--output", "-o"),
    layout: str = typer.Option("auto"),
    split: str = typer.Option(None, help="GenImage split (default val)."),
    warn_above: float = typer.Option(
        0.2, help="Warn when the metadata baseline beats chance by more than this."
    ),
) -> None:
    """Can the classes be told apart from file metadata alone? Formats, JPEG quality, sizes,
    and a cross-validated metadata-only baseline."""
    from .audit import audit_data as run_audit

    try:
        result = run_audit(data, output, layout=layout, split=split, warn_above=warn_above)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc
    console.print((output / "audit.md").read_text(), markup=False, soft_wrap=True)
    if result["shortcut"]:
        raise typer.Exit(3)


@app.command()
def export(
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint directory."),
    output: Path = typer.Option(
        None, "--output", "-o", help="Default: CHECKPOINT/model.onnx (then `--backend onnx`)."
    ),
    fmt: str = typer.Option("onnx", "--format", help="onnx"),
    legacy: bool = typer.Option(False, help="Use the TorchScript-based exporter."),
    check: bool = typer.Option(True, help="Compare ONNX Runtime with PyTorch on random input."),
) -> None:
    """Export the inference graph (vision tower + prompts + fixed text features -> probs)."""
    import numpy as np
    import torch

    from .checkpoint import load_pretrained
    from .export import InferenceGraph, OnnxDetector, export_checkpoint

    if fmt != "onnx":
        raise _fail(ValueError(f"only --format onnx is supported, not {fmt!r}"))
    try:
        path = export_checkpoint(model, output, dynamo=not legacy)
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")
    if check:
        torch_model = load_pretrained(model)
        onnx = OnnxDetector.from_pretrained(path.parent)
        size = torch_model.backbone.preprocess.image_size
        pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = InferenceGraph(torch_model)(pixels).numpy()
        diff = float(np.abs(onnx.forward_tensors(pixels) - expected).max())
        console.print(f"ONNX Runtime vs PyTorch: max abs difference {diff:.2e}")


@app.command()
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
) -> None:
    """Set the checkpoint's threshold so that at most FPR of held-out reals are called fake."""
    from dataclasses import asdict

    from .checkpoint import set_threshold
    from .data.layouts import find_images
    from .evaluate import calibrate_threshold, score_samples
    from .views import resolve

    try:
        detector = _load_model(str(model))
        chosen = resolve(
            _view_options(view, max_tiles, aggregate), detector.backbone.preprocess.view
        )
        reals = [s for s in find_images(data, layout, split=split).samples if s.label == 0]
        scores = score_samples(detector, reals, view=chosen)
        p = scores.fake_prob[scores.ok]
        value = calibrate_threshold(p, fpr)
        achieved = float((p >= value).mean())
        if not dry_run:
            info = {"target_fpr": fpr, "achieved_fpr": achieved, "n_real": len(p)}
            set_threshold(model, value, {**info, "data": str(data), "view": asdict(chosen)})
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc
    console.print(
        f"threshold {value:.6g}: {achieved:.2%} of {len(p)} real images called fake "
        f"(target {fpr:.2%})" + ("" if dry_run else f"; saved to {model}")
    )


@app.command("make-synthetic")
def make_synthetic(
    root: Path = typer.Argument(..., help="Where to write the images."),
    layout: str = typer.Option("genimage", help="genimage|ufd|chameleon|generic"),
    generators: str = typer.Option(
        "grid-2,grid-2-faint",
        help="Comma-separated stand-in generators: grid-2, grid-2-faint, grid-2-strong, grid-4.",
    ),
    n_per_class: int = typer.Option(64),
    size: int = typer.Option(32),
    seed: int = typer.Option(0),
    shortcut: str = typer.Option(
        None,
        help="biased: reals JPEG q90 of one size, fakes PNG of "
        "another; aligned: both alike (0_real/1_fake layout).",
    ),
) -> None:
    """Write a small synthetic real/fake data set in one of the field's layouts."""
    from .data.synthetic import write_layout, write_shortcut_set

    try:
        if shortcut is not None:
            if shortcut not in ("biased", "aligned"):
                raise ValueError("--shortcut is 'biased' or 'aligned'")
            write_shortcut_set(root, n_per_class, aligned=shortcut == "aligned", seed=seed)
            layout = f"{shortcut} 0_real/1_fake"
        else:
            write_layout(root, layout, tuple(_csv_list(generators) or []), n_per_class, size, seed)
    except (ValueError, KeyError) as exc:
        raise _fail(exc) from exc
    console.print(f"wrote a synthetic {layout} set to {root}")


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
        )
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
