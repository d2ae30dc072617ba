"""The whole evaluation of a model on a data set: clean, aligned and degraded passes, the
adversarial report on request, and every report file written to one folder; its dry run."""

from __future__ import annotations

import csv
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..data.degrade import Degradation
from ..data.layouts import data_source
from ..data.views import View
from ..data.views import resolve as resolve_view
from .adversarial import robustness_report, summary
from .metrics import add_flip_rates, confusion, subset_metrics
from .open_set import markdown as open_set_markdown
from .open_set import open_set_report
from .report import (
    markdown_table,
    metadata_table,
    paper_results,
    paper_rows,
    plot_curves,
    plot_robustness,
    robustness_table,
    write_json,
    write_table_csv,
)
from .scores import Scores, score_samples, write_scores_csv


def evaluate_dataset(
    model: Any,
    data: str | os.PathLike | Any,  # or the ImageSet already found
    output: str | os.PathLike,
    layout: str = "auto",
    split: str | None = "val",
    subsets: list[str] | None = None,
    degradations: list[Degradation] | None = None,
    protocol: str | None = None,
    threshold: float | None = None,
    batch_size: int = 64,
    workers: int | None = 2,
    console: Any = None,
    align: Any = None,
    cache_features: bool = True,
    view: View | str | dict[str, Any] | None = None,
    attacks: list[Any] | None = None,
    attack_model: Any = None,
    attack_options: dict[str, Any] | None = None,
    unknown_data: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score a data set (clean and degraded), and write the report to ``output``.

    Models with frozen image features (zero-shot, linear probe) score the clean pass from
    features cached under ``output/features`` (``cache_features``; see
    miragedet.inference.features). ``view``: how images become model inputs
    (:func:`miragedet.data.views.resolve`; by default the view the checkpoint was trained with).
    ``attacks`` (:mod:`miragedet.inference.attacks`): also the adversarial robustness report
    (:func:`miragedet.evaluation.adversarial.robustness_report`, with ``attack_options``), gradients
    from ``attack_model`` (default: ``model``).

    Writes scores.csv (+ scores_<degradation>.csv), metrics.json, report.md, table.csv,
    roc_pr.png, robustness_<kind>.png (with degradations) and confusion.csv (with 3+ classes).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ..data.layouts import ImageSet, find_images

    console = console or Console()
    view = resolve_view(view, model.backbone.preprocess.view)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if isinstance(data, ImageSet):  # found already (the CLI counts it to choose the engine)
        image_set = data
    else:
        image_set = find_images(data, layout, split=split)
        if subsets:
            image_set = image_set.only(subsets)
    threshold = model.threshold if threshold is None else float(threshold)
    classes = model.classes
    if len(image_set.classes) != len(classes):
        raise ValueError(
            f"the data has {len(image_set.classes)} classes "
            f"{image_set.classes}; the model has {len(classes)} {classes}"
        )
    runs: list[tuple[str, Any]] = [("clean", None)]
    if align is not None:
        runs.append((align.name, align))
    runs += [(d.name, d) for d in degradations or []]
    tables: dict[str, dict[str, dict[str, float]]] = {}
    clean_scores = None
    for name, degradation in runs:
        with Progress(
            TextColumn(f"score {name:<16}"), BarColumn(), MofNCompleteColumn(), console=console
        ) as progress:
            task = progress.add_task(name, total=len(image_set.samples))
            scores = score_samples(
                model,
                image_set.samples,
                batch_size=batch_size,
                workers=workers,
                degradation=degradation,
                on_batch=lambda n, t=task, p=progress: p.update(t, advance=n),
                cache_dir=output / "features" if cache_features else None,
                view=view,
            )
        suffix = "" if degradation is None else "_" + name.replace(":", "-")
        write_scores_csv(scores, output / f"scores{suffix}.csv", classes)
        tables[name] = subset_metrics(scores, threshold)
        if degradation is None:
            clean_scores = scores
        else:
            add_flip_rates(tables[name], clean_scores, scores, threshold)
    assert clean_scores is not None
    adversarial = None
    if attacks:
        adversarial = _adversarial(
            model, attack_model or model, clean_scores, attacks, output, threshold, view,
            batch_size, workers, console, attack_options or {},
        )  # fmt: skip
    metadata = metadata_table(clean_scores, threshold) if len(classes) == 2 else None
    open_set = None
    if getattr(model, "open_set", None) is not None:  # an adapted attribution model
        known = clean_scores
        if known.distance is None:  # scored through tiles: the test needs the resize view
            known = score_samples(model, image_set.samples, batch_size=batch_size,
                                  workers=workers)  # fmt: skip
        unknown = None
        if unknown_data:
            samples = find_images(unknown_data, layout).samples
            unknown = score_samples(model, samples, batch_size=batch_size, workers=workers)
        open_set = open_set_report(known, classes, model.open_set.threshold, unknown)
    elif unknown_data:
        raise ValueError("--unknown-data needs an attribution model adapted with an open set")
    paper = paper_rows(protocol, list(tables["clean"])) if protocol else None
    title = f"{model.config.method} on {Path(image_set.root).name} (threshold {threshold:g})"
    if view.kind != "resize":
        title += f", {view.kind} view" + (
            f" (at most {view.max_tiles} tiles, {view.aggregate})" if view.kind == "tiles" else ""
        )
    report = ["# Evaluation report", "", markdown_table(tables["clean"], title, paper)]
    aligned_name = align.name if align is not None else None
    degraded = {k: v for k, v in tables.items() if k not in ("clean", aligned_name)}
    if aligned_name:
        report += [
            f"## Format-aligned: every image re-encoded ({aligned_name})",
            "",
            "If accuracy falls here, the detector was reading the file format, not the generator.",
            "",
            robustness_table({"clean": tables["clean"], aligned_name: tables[aligned_name]}),
            "",
        ]
    if metadata is not None:
        report += [
            "## Metadata",
            "",
            "Images whose metadata declares generative AI (C2PA, XMP, generator parameters, a "
            "generative tool in EXIF) are called fake whatever the pixels say; "
            "`miragedet detect` does the same (the `basis` column).",
            "",
            "| subset | n | decided by metadata | of them fake | accuracy, pixels | "
            "accuracy, combined |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *[
                f"| {k} | {v['n']} | {v['decided']} | {v['decided_fake']} | "
                f"{100 * v['accuracy_pixels']:.1f} | {100 * v['accuracy_combined']:.1f} |"
                for k, v in metadata.items()
            ],
            "",
        ]
    if degraded:
        report += ["## Degradations", ""]
        for kind in dict.fromkeys(k.partition(":")[0] for k in degraded):
            rows = {
                "clean": tables["clean"],
                **{k: v for k, v in degraded.items() if k.startswith(kind + ":")},
            }
            report += [
                f"### {kind}",
                "",
                robustness_table(rows),
                f"![{kind}](robustness_{kind}.png)",
                "",
            ]
        if protocol:
            pdeg = paper_results()["protocols"][protocol].get("degradations", {})
            if pdeg:
                report += [
                    "Paper (mean accuracy): "
                    + ", ".join(f"{k} {v['accuracy']:.1f}" for k, v in pdeg.items()),
                    "",
                ]
        plot_robustness({"clean": tables["clean"], **degraded}, output)
    if adversarial is not None:
        report += summary(adversarial)
    if open_set is not None:
        report += open_set_markdown(open_set)
    plot_curves(clean_scores, output / "roc_pr.png", title)
    write_table_csv(tables["clean"], output / "table.csv")
    metrics: dict[str, Any] = {
        "data": data_source(data),
        "layout": image_set.layout,
        "split": split,
        "threshold": threshold,
        "classes": classes,
        "method": model.config.method,
        "backbone": model.backbone.source,
        "view": asdict(view),
        "clean": tables["clean"],
        "degradations": degraded,
        "aligned": {"name": aligned_name, "table": tables[aligned_name]} if aligned_name else None,
        "paper": paper,
        "protocol": protocol,
        "metadata": metadata,
        "adversarial": adversarial,
        "open_set": open_set,
        "skipped": [(p, r) for p, r in image_set.skipped]
        + [(clean_scores.samples[i].path, e) for i, e in clean_scores.errors.items()],
    }
    if len(classes) > 2:
        matrix = confusion(clean_scores, classes)
        metrics["confusion"] = {"classes": classes, "matrix": matrix.tolist()}
        with open(output / "confusion.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["true \\ predicted", *classes])
            for cls, row in zip(classes, matrix, strict=True):
                writer.writerow([cls, *row.tolist()])
        report += [
            "## Confusion matrix (rows: true class)",
            "",
            "| | " + " | ".join(classes) + " |",
            "| --- |" + " ---: |" * len(classes),
        ]
        report += [
            f"| {c} | " + " | ".join(str(v) for v in row) + " |"
            for c, row in zip(classes, matrix.tolist(), strict=True)
        ]
        report.append("")
    if metrics["skipped"]:
        report += [f"## Skipped files ({len(metrics['skipped'])})", ""]
        report += [f"- `{p}`: {r}" for p, r in metrics["skipped"][:200]]
        report.append("")
    write_json(metrics, output / "metrics.json")
    (output / "report.md").write_text("\n".join(report))
    return metrics


def _adversarial(
    model: Any,
    attack_model: Any,
    clean: Scores,
    attacks: list[Any],
    output: Path,
    threshold: float,
    view: View,
    batch_size: int,
    workers: int,
    console: Any,
    options: dict[str, Any],
) -> dict[str, Any]:
    """The adversarial robustness report, with a progress bar per attack."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"attack {name:<16}", total=total)
            progress.update(tasks[name], completed=done)

        return robustness_report(
            model, attack_model, clean, attacks, output, threshold, view,
            batch_size=batch_size, workers=workers, on_progress=on_progress, **options,
        )  # fmt: skip


def dry_run(
    model: Any,
    data: str | os.PathLike,
    passes: int = 1,
    layout: str = "auto",
    split: str | None = "val",
    subsets: list[str] | None = None,
    batch_size: int = 64,
    workers: int | None = 2,
    view: View | str | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What :func:`evaluate_dataset` would score and how long it would take on this machine:
    the image set found, seconds per image measured over up to two batches after a warm-up one,
    and the estimate for ``passes`` passes (clean, each degradation, the alignment). Writes
    nothing."""
    import time

    from ..data.layouts import find_images

    image_set = find_images(data, layout, split=split)
    if subsets:
        image_set = image_set.only(subsets)
    sample = image_set.samples[: 3 * batch_size]
    options = dict(
        batch_size=batch_size,
        workers=workers,
        view=resolve_view(view, model.backbone.preprocess.view),
    )
    score_samples(model, sample[:batch_size], **options)  # warm-up
    start = time.perf_counter()
    timed = sample[batch_size:] or sample
    scores = score_samples(model, timed, **options)
    per_image = (time.perf_counter() - start) / max(1, len(timed))
    return {
        "image_set": image_set,
        "batch_size": batch_size,
        "seconds_per_image": per_image,
        "total_s": per_image * len(image_set.samples) * passes,
        "unreadable": len(scores.errors),
    }
