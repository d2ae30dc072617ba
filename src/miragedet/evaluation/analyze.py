"""`miragedet analyze`: the paper's embedding analysis (section 4, figures 2 and 7) as a command.

A detector generalises when each class clusters tightly around its text anchor (low intra-class
variation, definition 4.1) and the classes sit far apart (high inter-class separation,
definition 4.2). For each model this embeds every image of a data set (streamed to disk), measures
both per subset and class, and draws a t-SNE map of the image embeddings with the text anchors.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.dataset import ImageDataset, collate
from ..data.layouts import ImageSet, data_source, find_images
from .report import write_json
from .scores import backed_off


@dataclass
class Embedded:
    """Unit image embeddings of a data set (memory-mapped), probabilities and text anchors."""

    name: str
    embeds: np.ndarray  # (n, D), NaN rows for unreadable images
    probs: np.ndarray  # (n, C)
    anchors: np.ndarray  # (C, D)
    classes: list[str]


@torch.inference_mode()
def embed_samples(
    model: Any, image_set: ImageSet, path: str | os.PathLike, batch_size: int = 64, workers: int = 0
) -> Embedded:
    """Embed every image into a .npy file on disk (so thousands of images fit in memory)."""
    model.eval()
    preprocess = model.backbone.preprocess
    device = model.clip.logit_scale.device
    n = len(image_set.samples)
    dim = model.clip.config.projection_dim
    embeds = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float32, shape=(n, dim))
    embeds[:] = np.nan
    probs = np.full((n, len(model.classes)), np.nan)
    dataset = ImageDataset(image_set.samples, lambda im, i: preprocess(im))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate
    )

    def forward(pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        out = model(pixels.to(device))
        return out.image_embeds.float().cpu().numpy(), out.probs.float().cpu().numpy()

    def join(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate([e for e, _ in parts]), np.concatenate([p for _, p in parts])

    forward = backed_off(forward, batch_size, device, join)  # a GPU out of memory: halved
    for batch in loader:
        if not len(batch["indices"]):
            continue
        idx = batch["indices"].numpy()
        embeds[idx], probs[idx] = forward(batch["pixel_values"])
    embeds.flush()
    anchors = model.encode_text().float().cpu().numpy()
    return Embedded(
        getattr(model, "name", model.config.method), embeds, probs, anchors, list(model.classes)
    )


def geometry_table(
    embeds: np.ndarray,
    labels: np.ndarray,
    subsets: np.ndarray,
    anchors: np.ndarray,
    classes: list[str],
    probs: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Per subset and class: intra-class variation and inter-class separation.

    For unit vectors, cosine distance is 1 - cos and the Euclidean distance on the sphere is
    sqrt(2 - 2 cos). ``intra`` is the distance of a class's images to its own anchor; ``inter``
    to the nearest other class's anchor; ``centroid_gap`` the Euclidean distance between this
    class's mean embedding and the other classes' (pooled) mean in the same subset; ``margin`` is
    inter - intra (cosine). With ``probs``, the subset's accuracy (class 0 real vs the rest at
    p >= 0.5) is given too.
    """
    ok = ~np.isnan(embeds[:, 0])
    cos = embeds @ anchors.T  # (n, C)
    rows = []
    for subset in dict.fromkeys(subsets.tolist()):
        in_subset = ok & (subsets == subset)
        accuracy = None
        if probs is not None and in_subset.any():
            fake = 1.0 - probs[in_subset, 0]
            accuracy = float(((fake >= 0.5) == (labels[in_subset] != 0)).mean())
        for c, name in enumerate(classes):
            mask = in_subset & (labels == c)
            if not mask.any():
                continue
            own = cos[mask, c]
            others = np.delete(cos[mask], c, axis=1)
            nearest_other = others.max(axis=1)
            rest = in_subset & (labels != c)
            gap = (
                float(np.linalg.norm(embeds[mask].mean(0) - embeds[rest].mean(0)))
                if rest.any()
                else float("nan")
            )
            intra_cos, inter_cos = 1.0 - own, 1.0 - nearest_other
            intra_euc = np.sqrt(np.clip(2.0 - 2.0 * own, 0, None))
            inter_euc = np.sqrt(np.clip(2.0 - 2.0 * nearest_other, 0, None))
            rows.append(
                {
                    "subset": subset,
                    "class": name,
                    "n": int(mask.sum()),
                    "intra_cos_mean": float(intra_cos.mean()),
                    "intra_cos_std": float(intra_cos.std()),
                    "intra_euc_mean": float(intra_euc.mean()),
                    "intra_euc_std": float(intra_euc.std()),
                    "inter_cos_mean": float(inter_cos.mean()),
                    "inter_euc_mean": float(inter_euc.mean()),
                    "margin_cos": float((inter_cos - intra_cos).mean()),
                    "centroid_gap": gap,
                    "accuracy": accuracy,
                }
            )
    return rows


def tsne_sample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Indices of a seeded sample of at most ``max_points`` of ``n`` (sorted)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def tsne_map(embeds: np.ndarray, anchors: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE coordinates of images followed by anchors (scikit-learn, seeded)."""
    from sklearn.manifold import TSNE

    points = np.concatenate([embeds, anchors])
    perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3.0)))
    return TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine"
    ).fit_transform(points)


def plot_maps(
    maps: list[dict[str, Any]], path: str | os.PathLike, size: tuple[float, float]
) -> None:
    """Models side by side: images coloured by subset, shaped by class; anchors as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = ["o", "^", "s", "D", "v", "P", "X", "<", ">"]
    fig, axes = plt.subplots(1, len(maps), figsize=size, squeeze=False, dpi=100)
    for ax, item in zip(axes[0], maps, strict=True):
        xy, subsets, labels = item["xy"], item["subsets"], item["labels"]
        palette = plt.get_cmap("tab10")
        for s, subset in enumerate(dict.fromkeys(subsets.tolist())):
            for c, name in enumerate(item["classes"]):
                mask = (subsets == subset) & (labels == c)
                if mask.any():
                    ax.scatter(
                        xy[mask, 0],
                        xy[mask, 1],
                        s=9,
                        alpha=0.6,
                        color=palette(s % 10),
                        marker=markers[c % len(markers)],
                        label=f"{subset} / {name}",
                    )
        for c, name in enumerate(item["classes"]):
            ax.scatter(
                *item["anchor_xy"][c],
                s=380,
                marker="*",
                color="gold",
                edgecolor="black",
                linewidth=1.2,
                zorder=5,
            )
            ax.annotate(
                f'"{name}"',
                item["anchor_xy"][c],
                fontsize=10,
                fontweight="bold",
                xytext=(6, 6),
                textcoords="offset points",
            )
        ax.set_title(item["name"])
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=1.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(rows: list[dict[str, Any]], model: str) -> str:
    lines = [
        f"### {model}",
        "",
        "| subset | class | n | intra cos (mean ± sd) | intra euc | inter cos | margin | "
        "centroid gap | subset acc |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}"
        lines.append(
            f"| {r['subset']} | {r['class']} | {r['n']} | {r['intra_cos_mean']:.3f} ± "
            f"{r['intra_cos_std']:.3f} | {r['intra_euc_mean']:.3f} | {r['inter_cos_mean']:.3f} | "
            f"{r['margin_cos']:+.3f} | {r['centroid_gap']:.3f} | {acc} |"
        )
    return "\n".join(lines) + "\n"


def analyze(
    models: list[Any],
    data: str | os.PathLike,
    output: str | os.PathLike,
    layout: str = "auto",
    split: str | None = "val",
    max_points: int = 2000,
    seed: int = 0,
    batch_size: int = 64,
    workers: int = 0,
    figsize: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Run the analysis for each model and write analysis.{md,csv,json}, tsne.png, tsne.csv."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    image_set = find_images(data, layout, split=split)
    labels = np.array([s.label for s in image_set.samples])
    subsets = np.array([s.subset for s in image_set.samples], dtype=object)
    sample = tsne_sample(len(image_set.samples), max_points, seed)
    all_rows, maps, report = [], [], ["# Embedding analysis", ""]
    tsne_rows = []
    for k, model in enumerate(models):
        name = getattr(model, "name", None) or model.config.method
        if len(model.classes) != len(image_set.classes):
            raise ValueError(
                f"model {name} has classes {model.classes}; the data has {image_set.classes}"
            )
        emb = embed_samples(model, image_set, output / f"embeddings_{k}.npy", batch_size, workers)
        rows = geometry_table(emb.embeds, labels, subsets, emb.anchors, model.classes, emb.probs)
        all_rows += [{"model": name, **r} for r in rows]
        report.append(markdown(rows, name))
        idx = sample[~np.isnan(emb.embeds[sample, 0])]
        xy = tsne_map(np.asarray(emb.embeds[idx]), emb.anchors, seed)
        maps.append(
            {
                "name": name,
                "xy": xy[: len(idx)],
                "anchor_xy": xy[len(idx) :],
                "subsets": subsets[idx],
                "labels": labels[idx],
                "classes": model.classes,
            }
        )
        tsne_rows += [
            {
                "model": name,
                "kind": "image",
                "path": image_set.samples[i].path,
                "subset": subsets[i],
                "class": model.classes[labels[i]],
                "x": float(x),
                "y": float(y),
            }
            for i, (x, y) in zip(idx, xy, strict=False)
        ]
        tsne_rows += [
            {
                "model": name,
                "kind": "anchor",
                "path": "",
                "subset": "",
                "class": c,
                "x": float(x),
                "y": float(y),
            }
            for c, (x, y) in zip(model.classes, xy[len(idx) :], strict=True)
        ]
    size = figsize or (6.0 * len(models) + 2.5, 5.5)
    plot_maps(maps, output / "tsne.png", size)
    for name, rows in (("analysis.csv", all_rows), ("tsne.csv", tsne_rows)):
        with open(output / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    report += [
        "intra: distance of a class's images to its own text anchor (lower is tighter); "
        "inter: to the nearest other anchor; margin = inter - intra (cosine distance); "
        "centroid gap: Euclidean distance between the class means.",
        "",
        "![t-SNE](tsne.png)",
        "",
    ]
    (output / "analysis.md").write_text("\n".join(report))
    summary = {
        "data": data_source(data),
        "models": [m["name"] for m in maps],
        "rows": all_rows,
        "tsne_points": len(sample),
        "skipped": image_set.skipped,
    }
    write_json(summary, output / "analysis.json")
    return summary
