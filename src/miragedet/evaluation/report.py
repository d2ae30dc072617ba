"""Reports of an evaluation: Markdown and CSV tables (the paper's row beside ours), ROC/PR and
robustness plots, the metadata table, JSON."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from .metrics import METRIC_LABELS, METRICS
from .scores import Scores


def metadata_table(scores: Scores, threshold: float) -> dict[str, dict[str, float]]:
    """Per subset (and overall): how many images their metadata alone decides (a declaration of
    generative AI: C2PA, XMP, generator parameters, a generative tool in EXIF), how many of those
    are in fact fake, and accuracy with the pixels alone and with the combined verdict
    (:func:`miragedet.provenance.combine`). Most benchmark sets have their metadata stripped, so
    "decided" is often 0 there: that is the honest figure, not a failure."""
    from ..provenance.verdict import read_provenance

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


# -- robustness --------------------------------------------------------------------------------


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
