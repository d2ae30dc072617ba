"""Evaluation: score image sets, compute metrics (scikit-learn), write tables, plots and scores.

Fake is the positive class. Both per-class accuracies are always reported: a detector can look
good on average while failing one class (method.md, Chameleon).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from .data.dataset import ImageDataset, collate
from .data.degrade import Degradation
from .data.layouts import Sample
from .data.transforms import Preprocess
from .views import View, aggregate
from .views import resolve as resolve_view

METRICS = ("accuracy", "real_accuracy", "fake_accuracy", "ap", "auc")
METRIC_LABELS = {
    "accuracy": "Acc",
    "real_accuracy": "Real acc",
    "fake_accuracy": "Fake acc",
    "ap": "AP",
    "auc": "AUC",
}


def binary_metrics(
    labels: Sequence[int] | np.ndarray,
    fake_prob: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Metrics of p(fake) against labels (0 = real, anything else = fake)."""
    y = (np.asarray(labels) != 0).astype(int)
    p = np.asarray(fake_prob, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {p.shape} must be equal-length vectors")
    pred = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    nan = float("nan")
    return {
        "n": len(y),
        "accuracy": float(accuracy_score(y, pred)) if len(y) else nan,
        "real_accuracy": float((pred[y == 0] == 0).mean()) if (y == 0).any() else nan,
        "fake_accuracy": float((pred[y == 1] == 1).mean()) if (y == 1).any() else nan,
        "ap": float(average_precision_score(y, p)) if both else nan,
        "auc": float(roc_auc_score(y, p)) if both else nan,
    }


@dataclass
class Scores:
    """Per-image outputs of a model over a list of samples (errors kept, never dropped)."""

    samples: list[Sample]
    probs: np.ndarray  # (n, C); NaN rows where the image could not be read
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.probs[:, 0])

    @property
    def fake_prob(self) -> np.ndarray:
        return 1.0 - self.probs[:, 0]

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=int)

    @property
    def subsets(self) -> np.ndarray:
        return np.array([s.subset for s in self.samples], dtype=object)


@torch.inference_mode()
def score_samples(
    model: Any,
    samples: list[Sample],
    batch_size: int = 64,
    workers: int = 0,
    degradation: Degradation | None = None,
    preprocess: Preprocess | None = None,
    device: torch.device | str | None = None,
    on_batch: Callable[[int], None] | None = None,
    cache_dir: str | os.PathLike | None = None,
    view: View | None = None,
) -> Scores:
    """Class probabilities of every sample; unreadable images get NaN and an error message.

    With ``cache_dir``, a model whose image features are frozen (zero-shot, linear probe, text
    prompts) scores from features computed once and kept there (:mod:`miragedet.features`): a
    rerun, another head on the same backbone or the next epoch's validation reads them back.
    With a ``crop``/``tiles`` ``view`` each image is scored from its native-resolution tiles
    (:mod:`miragedet.views`), ``batch_size`` images' tiles at a time."""
    preprocess = preprocess or model.backbone.preprocess
    device = torch.device(device) if device is not None else model.clip.logit_scale.device
    if view is not None and view.kind != "resize":
        return _score_tiles(
            model, samples, batch_size, workers, degradation, preprocess, device, on_batch, view
        )
    if cache_dir is not None and degradation is None and model.image_features_frozen:
        scores = _score_cached(model, samples, batch_size, workers, preprocess, device, cache_dir)
        if on_batch is not None:
            on_batch(len(samples))
        return scores
    image_transform = None
    if degradation is not None:

        def image_transform(image, index, d=degradation):
            return d(image, seed=index)

    dataset = ImageDataset(samples, lambda im, i: preprocess(im), image_transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate, shuffle=False
    )
    probs = np.full((len(samples), len(model.classes)), np.nan)
    errors: dict[int, str] = {}
    model.eval()
    for batch in loader:
        errors.update(dict(batch["errors"]))
        if len(batch["indices"]):
            out = model(batch["pixel_values"].to(device))
            probs[batch["indices"].numpy()] = out.probs.float().cpu().numpy()
        if on_batch is not None:
            on_batch(len(batch["indices"]) + len(batch["errors"]))
    return Scores(samples, probs, errors)


def _score_tiles(
    model: Any,
    samples: list[Sample],
    batch_size: int,
    workers: int,
    degradation: Degradation | None,
    preprocess: Preprocess,
    device: torch.device,
    on_batch: Callable[[int], None] | None,
    view: View,
) -> Scores:
    """:func:`score_samples` with the crop/tiles view: each image's tiles are forwarded in
    chunks of ``batch_size`` tiles (the tiles of several images share them), then aggregated."""
    from .views import forward_tiles, inputs

    def image_transform(image, index, d=degradation):
        return d(image, seed=index) if d is not None else image

    def tiles_of(image, index):
        return inputs(image, preprocess, view).pixels

    def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
        good = [it for it in items if it["error"] is None]
        return {
            "tiles": [it["pixel_values"] for it in good],
            "indices": [it["index"] for it in good],
            "errors": [(it["index"], it["error"]) for it in items if it["error"] is not None],
        }

    dataset = ImageDataset(samples, tiles_of, image_transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_items
    )
    probs = np.full((len(samples), len(model.classes)), np.nan)
    errors: dict[int, str] = {}
    model.eval()

    def forward(pixels: torch.Tensor) -> np.ndarray:
        return model(pixels.to(device)).probs.float().cpu().numpy()

    for batch in loader:
        errors.update(dict(batch["errors"]))
        if batch["indices"]:
            per_image = forward_tiles(forward, batch["tiles"], batch_size)
            for index, rows in zip(batch["indices"], per_image, strict=True):
                probs[index] = aggregate(rows, view.aggregate)
        if on_batch is not None:
            on_batch(len(batch["indices"]) + len(batch["errors"]))
    return Scores(samples, probs, errors)


def _score_cached(
    model: Any,
    samples: list[Sample],
    batch_size: int,
    workers: int,
    preprocess: Preprocess,
    device: torch.device,
    cache_dir: str | os.PathLike,
) -> Scores:
    from . import features

    path = features.cache_path(
        cache_dir,
        "eval",
        samples,
        model.backbone,
        preprocess=preprocess.to_dict(),  # the one scored with, when not the backbone's own
        dtype=str(model.clip.logit_scale.dtype),
    )

    def batches():
        dataset = ImageDataset(samples, lambda im, i: preprocess(im))
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate
        )

    model.eval()
    embeds, errors, computed = features.load_or_compute(
        path,
        batches,
        lambda pixels: model.encode_image(pixels.to(device)),
        len(samples),
    )
    model.features_computed = computed  # how many images were encoded (0: read back)
    probs = np.full((len(samples), len(model.classes)), np.nan)
    good = [i for i in range(len(samples)) if i not in errors]
    if good:
        image = embeds[good].to(device, model.clip.logit_scale.dtype)
        probs[good] = model.forward_from_embeds(image).probs.float().cpu().numpy()
    return Scores(samples, probs, errors)


def flip_rates(clean: Scores, other: Scores, threshold: float) -> dict[str, float]:
    """Per subset (and mean): share of images whose verdict differs between two scorings."""
    both = clean.ok & other.ok
    flipped = (clean.fake_prob >= threshold) != (other.fake_prob >= threshold)
    out = {}
    subsets = clean.subsets
    for subset in dict.fromkeys(subsets.tolist()):
        mask = both & (subsets == subset)
        out[subset] = float(flipped[mask].mean()) if mask.any() else float("nan")
    if len(out) > 1:
        out["mean"] = float(np.nanmean(list(out.values())))
    return out


def add_flip_rates(
    table: dict[str, dict[str, float]], clean: Scores, other: Scores, threshold: float
) -> None:
    for subset, rate in flip_rates(clean, other, threshold).items():
        if subset in table:
            table[subset]["flip_rate"] = rate


def subset_metrics(scores: Scores, threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Metrics per subset plus their mean over subsets (the paper's "average" column)."""
    ok = scores.ok
    out: dict[str, dict[str, float]] = {}
    subsets = scores.subsets
    for subset in dict.fromkeys(subsets.tolist()):
        mask = ok & (subsets == subset)
        out[subset] = binary_metrics(scores.labels[mask], scores.fake_prob[mask], threshold)
        if scores.probs.shape[1] > 2:
            pred = scores.probs[mask].argmax(axis=1)
            out[subset]["class_accuracy"] = float((pred == scores.labels[mask]).mean())
    if len(out) > 1:
        keys = [k for k in next(iter(out.values())) if k != "n"]
        out["mean"] = {k: float(np.nanmean([m[k] for m in out.values()])) for k in keys}
        out["mean"]["n"] = int(sum(m["n"] for k, m in out.items() if k != "mean"))
    return out


# -- reports ----------------------------------------------------------------------------------


def write_scores_csv(scores: Scores, path: str | os.PathLike, classes: list[str]) -> None:
    """One row per image: path, subset, label, p_fake, per-class probabilities, error."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["path", "subset", "label", "p_fake", *[f"p_{c}" for c in classes], "error"]
        )
        for i, sample in enumerate(scores.samples):
            row = scores.probs[i]
            values = ["" if np.isnan(v) else f"{v:.8g}" for v in row]
            p_fake = "" if np.isnan(row[0]) else f"{1.0 - row[0]:.8g}"
            writer.writerow(
                [
                    sample.path,
                    sample.subset,
                    sample.label,
                    p_fake,
                    *values,
                    scores.errors.get(i, ""),
                ]
            )


def read_scores_csv(path: str | os.PathLike) -> tuple[list[Sample], np.ndarray, dict[int, str]]:
    """Read back a scores.csv: samples, probabilities (NaN where unreadable), errors."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    prob_cols = [k for k in (rows[0] if rows else {}) if k.startswith("p_") and k != "p_fake"]
    samples = [Sample(r["path"], int(r["label"]), r["subset"]) for r in rows]
    probs = np.array([[float(r[c]) if r[c] else np.nan for c in prob_cols] for r in rows])
    errors = {i: r["error"] for i, r in enumerate(rows) if r["error"]}
    return samples, probs.reshape(len(rows), len(prob_cols)), errors


def metadata_table(scores: Scores, threshold: float) -> dict[str, dict[str, float]]:
    """Per subset (and overall): how many images their metadata alone decides (a declaration of
    generative AI: C2PA, XMP, generator parameters, a generative tool in EXIF), how many of those
    are in fact fake, and accuracy with the pixels alone and with the combined verdict
    (:func:`miragedet.provenance.combine`). Most benchmark sets have their metadata stripped, so
    "decided" is often 0 there: that is the honest figure, not a failure."""
    from .provenance import read_provenance

    ok, labels, subsets = scores.ok, scores.labels, scores.subsets
    declared = np.array(
        [bool(k) and read_provenance(s.path)["declares_ai"]
         for s, k in zip(scores.samples, ok, strict=True)]
    )  # fmt: skip
    pixels = (scores.fake_prob >= threshold).astype(int)
    combined = np.where(declared, 1, pixels)
    out: dict[str, dict[str, float]] = {}
    for subset in [*dict.fromkeys(subsets.tolist()), "all"]:
        mask = ok & ((subsets == subset) if subset != "all" else True)
        n = int(mask.sum())
        out[subset] = {
            "n": n,
            "decided": int(declared[mask].sum()),
            "decided_fake": int((declared & (labels >= 1))[mask].sum()),
            "accuracy_pixels": float((pixels[mask] == (labels[mask] >= 1)).mean()) if n else 0.0,
            "accuracy_combined": float((combined[mask] == (labels[mask] >= 1)).mean())
            if n
            else 0.0,
        }
    return out


def markdown_table(
    table: dict[str, dict[str, float]],
    title: str | None = None,
    paper: dict[str, dict[str, float]] | None = None,
) -> str:
    """Paper-style table: one column per subset (+ mean), one row per metric, in percent.

    With ``paper``, the paper's own value is shown in a row under ours where it exists.
    """
    columns = list(table)
    lines = [f"**{title}**", ""] if title else []
    lines.append("| metric | " + " | ".join(columns) + " |")
    lines.append("| --- |" + " ---: |" * len(columns))
    for metric in (*METRICS, "class_accuracy"):
        if not any(metric in table[c] for c in columns):
            continue
        cells = [_pct(table[c].get(metric)) for c in columns]
        lines.append(f"| {METRIC_LABELS.get(metric, metric)} | " + " | ".join(cells) + " |")
        if paper and any(metric in paper.get(c, {}) for c in columns):
            cells = [_pct(paper.get(c, {}).get(metric), scale=1) for c in columns]
            lines.append(
                f"| {METRIC_LABELS.get(metric, metric)} (paper) | " + " | ".join(cells) + " |"
            )
    lines.append("| images | " + " | ".join(str(table[c].get("n", "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _pct(value: float | None, scale: float = 100.0) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value * scale:.1f}"


def write_table_csv(table: dict[str, dict[str, float]], path: str | os.PathLike) -> None:
    metrics = [
        m for m in (*METRICS, "class_accuracy", "n") if any(m in row for row in table.values())
    ]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subset", *metrics])
        for subset, row in table.items():
            writer.writerow([subset, *[row.get(m, "") for m in metrics]])


def plot_curves(scores: Scores, path: str | os.PathLike, title: str = "") -> None:
    """ROC and precision-recall curves per subset, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.8))
    y_all = (scores.labels != 0).astype(int)
    for subset in dict.fromkeys(scores.subsets.tolist()):
        mask = scores.ok & (scores.subsets == subset)
        y, p = y_all[mask], scores.fake_prob[mask]
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        precision, recall, _ = precision_recall_curve(y, p)
        roc_ax.plot(fpr, tpr, label=f"{subset} (AUC {roc_auc_score(y, p):.3f})")
        pr_ax.plot(recall, precision, label=f"{subset} (AP {average_precision_score(y, p):.3f})")
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc_ax.set(
        xlabel="false positive rate (reals called fake)", ylabel="true positive rate", title="ROC"
    )
    pr_ax.set(xlabel="recall (fakes caught)", ylabel="precision", title="Precision-recall")
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is roc_ax else "lower left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion(scores: Scores, classes: list[str]) -> np.ndarray:
    ok = scores.ok
    pred = scores.probs[ok].argmax(axis=1)
    return confusion_matrix(scores.labels[ok], pred, labels=list(range(len(classes))))


def write_json(data: Any, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


# -- the paper's numbers ----------------------------------------------------------------------


def paper_results() -> dict[str, Any]:
    """The paper's reported numbers (percent), from the package's paper_results.json."""
    return json.loads((Path(__file__).parent / "paper_results.json").read_text())


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def paper_rows(protocol: str, subsets: list[str]) -> dict[str, dict[str, float]]:
    """The paper's values keyed by our subset names (fractions, like our metrics)."""
    data = paper_results()["protocols"].get(protocol)
    if data is None:
        raise ValueError(
            f"unknown protocol {protocol!r}; known: {', '.join(paper_results()['protocols'])}"
        )
    lookup = {}
    for key, names in data.get("aliases", {}).items():
        for alias in [key, *names]:
            lookup[_norm(alias)] = key
    out: dict[str, dict[str, float]] = {}
    for subset in subsets:
        key = "mean" if subset == "mean" else lookup.get(_norm(subset), subset)
        if key in data["subsets"]:
            out[subset] = {k: v / 100.0 for k, v in data["subsets"][key].items()}
    real_subsets = [s for s in subsets if s != "mean"]
    if len(real_subsets) == 1 and "mean" in data["subsets"] and real_subsets[0] not in out:
        out[real_subsets[0]] = {k: v / 100.0 for k, v in data["subsets"]["mean"].items()}
    return out


# -- the whole evaluation ---------------------------------------------------------------------


def robustness_table(
    tables: dict[str, dict[str, dict[str, float]]], metric: str = "accuracy"
) -> str:
    """Markdown: one row per degradation, one column per subset (+ mean), values in percent,
    with the share of verdicts that changed from the clean run."""
    names = list(tables)
    columns = list(next(iter(tables.values())))
    lines = [
        f"| degradation ({METRIC_LABELS.get(metric, metric)} / verdict flips vs clean) | "
        + " | ".join(columns)
        + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for name in names:
        cells = []
        for c in columns:
            row = tables[name].get(c, {})
            flip = row.get("flip_rate")
            cells.append(_pct(row.get(metric)) + ("" if flip is None else f" / {_pct(flip)}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_robustness(
    tables: dict[str, dict[str, dict[str, float]]],
    output: str | os.PathLike,
    metric: str = "accuracy",
) -> list[Path]:
    """One PNG per degradation kind (robustness_<kind>.png): metric against strength, one line
    per subset and one for the mean, the clean value dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = tables.get("clean", {})
    kinds: dict[str, list[tuple[float, dict[str, dict[str, float]]]]] = {}
    for name, table in tables.items():
        if name != "clean":
            kind, _, value = name.partition(":")
            kinds.setdefault(kind, []).append((float(value), table))
    written = []
    for kind, points in sorted(kinds.items()):
        points.sort(key=lambda p: p[0])
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for subset in points[0][1]:
            ys = [100 * t.get(subset, {}).get(metric, float("nan")) for _, t in points]
            style = {"linewidth": 2.5, "color": "black"} if subset == "mean" else {"alpha": 0.8}
            line = ax.plot([p[0] for p in points], ys, marker="o", label=subset, **style)[0]
            if subset in clean:
                ax.axhline(
                    100 * clean[subset].get(metric, float("nan")),
                    linestyle=":",
                    color=line.get_color(),
                    linewidth=1,
                )
        ax.set(
            title=f"{kind} (dotted: clean)",
            xlabel={
                "jpeg": "JPEG quality",
                "blur": "sigma (px)",
                "downsample": "short side (px)",
                "scale": "scale factor",
                "noise": "sigma (grey levels)",
            }.get(kind, kind),
            ylabel=f"{METRIC_LABELS.get(metric, metric)} (%)",
        )
        if kind in ("jpeg", "downsample", "scale"):
            ax.invert_xaxis()  # stronger degradation to the right
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(output) / f"robustness_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def evaluate_dataset(
    model: Any,
    data: str | os.PathLike,
    output: str | os.PathLike,
    layout: str = "auto",
    split: str | None = "val",
    subsets: list[str] | None = None,
    degradations: list[Degradation] | None = None,
    protocol: str | None = None,
    threshold: float | None = None,
    batch_size: int = 64,
    workers: int = 2,
    console: Any = None,
    align: Any = None,
    cache_features: bool = True,
    view: View | str | dict[str, Any] | None = None,
    attacks: list[Any] | None = None,
    attack_model: Any = None,
    attack_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a data set (clean and degraded), and write the report to ``output``.

    Models with frozen image features (zero-shot, linear probe) score the clean pass from
    features cached under ``output/features`` (``cache_features``; see miragedet.features).
    ``view``: how images become model inputs (:func:`miragedet.views.resolve`; by default the
    view the checkpoint was trained with). ``attacks`` (:mod:`miragedet.attacks`): also the
    adversarial robustness report (:func:`miragedet.adversarial.robustness_report`, with
    ``attack_options``), gradients from ``attack_model`` (default: ``model``).

    Writes scores.csv (+ scores_<degradation>.csv), metrics.json, report.md, table.csv,
    roc_pr.png, robustness_<kind>.png (with degradations) and confusion.csv (with 3+ classes).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .data.layouts import find_images

    console = console or Console()
    view = resolve_view(view, model.backbone.preprocess.view)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
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
    paper = paper_rows(protocol, list(tables["clean"])) if protocol else None
    title = f"{model.config.method} on {Path(data).name} (threshold {threshold:g})"
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
        from .adversarial import summary

        report += summary(adversarial)
    plot_curves(clean_scores, output / "roc_pr.png", title)
    write_table_csv(tables["clean"], output / "table.csv")
    metrics: dict[str, Any] = {
        "data": str(data),
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

    from .adversarial import robustness_report

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
    workers: int = 2,
    view: View | str | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What :func:`evaluate_dataset` would score and how long it would take on this machine:
    the image set found, seconds per image measured over up to two batches after a warm-up one,
    and the estimate for ``passes`` passes (clean, each degradation, the alignment). Writes
    nothing."""
    import time

    from .data.layouts import find_images

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


# -- threshold calibration --------------------------------------------------------------------


def calibrate_threshold(real_fake_prob: Sequence[float] | np.ndarray, target_fpr: float) -> float:
    """The lowest threshold at which at most ``target_fpr`` of these real images score >= it."""
    p = np.sort(np.asarray(real_fake_prob, dtype=np.float64))[::-1]  # descending
    if not len(p) or not 0 <= target_fpr < 1:
        raise ValueError("need real-image scores and a target false-positive rate in [0, 1)")
    allowed = int(np.floor(target_fpr * len(p)))  # how many reals may be called fake
    if allowed >= len(p):
        return float(p[-1])
    # Strictly above the (allowed+1)-th highest score, so that one is not flagged.
    return float(np.nextafter(p[allowed], np.inf))
