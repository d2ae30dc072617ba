"""`miragedet audit-data`: can this data set be told apart without looking at the pixels?

In several public sets the real images are JPEGs of one size range and the fakes PNGs of another
(GenImage's ImageNet reals vs PNG fakes is the known case). A detector can then learn the file
format instead of the generator. This reads only file headers and sizes, tabulates format, JPEG
quality (estimated from the quantisation tables), size and aspect ratio per subset and class, and
cross-validates a metadata-only classifier: far above chance means the set carries a shortcut.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.layouts import ImageSet, data_source, find_images
from .report import write_json

#: The IJG standard luminance quantisation table (natural order), quality 50.
_STD_LUMA = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ],
    dtype=np.float64,
)


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((_STD_LUMA * scale + 50) / 100), 1, 255)


_IJG = {q: _ijg_table(q) for q in range(1, 101)}


def jpeg_quality(quantization: dict[int, Any]) -> int | None:
    """Estimated IJG quality (1-100) of a JPEG from its luminance quantisation table.

    Exact for encoders that scale the standard table (libjpeg, Pillow, most cameras' "quality");
    for custom tables it returns the closest IJG quality.
    """
    if not quantization or 0 not in quantization:
        return None
    table = np.asarray(list(quantization[0]), dtype=np.float64)
    if table.shape != (64,):
        return None
    return min(_IJG, key=lambda q: (np.abs(_IJG[q] - table).sum(), -q))


@dataclass
class FileInfo:
    path: str
    label: int
    subset: str
    format: str
    width: int
    height: int
    bytes: int
    quality: int | None
    error: str | None = None


def inspect_file(path: str, label: int = 0, subset: str = "") -> FileInfo:
    """Header facts of one image file (nothing is decoded)."""
    try:
        size = os.path.getsize(path)
        with Image.open(path) as image:
            quality = (
                jpeg_quality(getattr(image, "quantization", None))
                if image.format == "JPEG"
                else None
            )
            return FileInfo(
                path, label, subset, image.format or "?", image.width, image.height, size, quality
            )
    except Exception as exc:
        return FileInfo(path, label, subset, "unreadable", 0, 0, 0, None, str(exc)[:200])


def metadata_features(infos: list[FileInfo]) -> tuple[np.ndarray, list[str]]:
    """Features a shortcut can use: format (one-hot), JPEG quality, width, height, log bytes,
    aspect ratio, bytes per pixel."""
    formats = sorted({i.format for i in infos})
    rows = []
    for i in infos:
        pixels = max(i.width * i.height, 1)
        rows.append(
            [
                *(float(i.format == f) for f in formats),
                float(i.quality if i.quality is not None else -1),
                float(i.width),
                float(i.height),
                float(np.log1p(i.bytes)),
                float(i.width / max(i.height, 1)),
                float(i.bytes / pixels),
            ]
        )
    names = [f"format={f}" for f in formats] + [
        "jpeg_quality",
        "width",
        "height",
        "log_bytes",
        "aspect",
        "bytes_per_pixel",
    ]
    return np.asarray(rows), names


def metadata_baseline(infos: list[FileInfo], folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Cross-validated accuracy of a random forest on metadata alone (real vs fake)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    usable = [i for i in infos if i.error is None]
    y = np.array([int(i.label != 0) for i in usable])
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        return {
            "accuracy": None,
            "chance": None,
            "folds": 0,
            "n": len(usable),
            "note": "needs images of both classes",
        }
    x, names = metadata_features(usable)
    k = int(min(folds, counts.min()))
    forest = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    scores = cross_val_score(forest, x, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed))
    forest.fit(x, y)
    importance = sorted(zip(names, forest.feature_importances_, strict=True), key=lambda t: -t[1])
    return {
        "accuracy": float(scores.mean()),
        "accuracy_std": float(scores.std()),
        "chance": float(counts.max() / counts.sum()),
        "folds": k,
        "n": len(usable),
        "top_features": [(n, float(v)) for n, v in importance[:4]],
    }


def summarize(infos: list[FileInfo], classes: list[str]) -> list[dict[str, Any]]:
    """Per subset and class: formats, JPEG quality, size and aspect distributions."""
    rows = []
    for subset in dict.fromkeys(i.subset for i in infos):
        for c, name in enumerate(classes):
            group = [i for i in infos if i.subset == subset and i.label == c and i.error is None]
            if not group:
                continue
            formats = Counter(i.format for i in group)
            qualities = [i.quality for i in group if i.quality is not None]
            widths = np.array([i.width for i in group])
            heights = np.array([i.height for i in group])
            rows.append(
                {
                    "subset": subset,
                    "class": name,
                    "n": len(group),
                    "formats": dict(formats.most_common()),
                    "jpeg_quality_median": float(np.median(qualities)) if qualities else None,
                    "jpeg_quality_range": [min(qualities), max(qualities)] if qualities else None,
                    "width_median": float(np.median(widths)),
                    "height_median": float(np.median(heights)),
                    "short_side_range": [
                        int(np.minimum(widths, heights).min()),
                        int(np.minimum(widths, heights).max()),
                    ],
                    "aspect_median": float(np.median(widths / np.maximum(heights, 1))),
                    "kb_median": float(np.median([i.bytes for i in group]) / 1024),
                }
            )
    return rows


def plot_audit(infos: list[FileInfo], classes: list[str], path: str | os.PathLike) -> None:
    """Format shares, JPEG quality histogram and image sizes, per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [i for i in infos if i.error is None]
    fig, (ax_fmt, ax_q, ax_size) = plt.subplots(1, 3, figsize=(14, 4))
    formats = sorted({i.format for i in good})
    width = 0.8 / max(len(classes), 1)
    for c, name in enumerate(classes):
        group = [i for i in good if i.label == c]
        if not group:
            continue
        shares = [sum(i.format == f for i in group) / len(group) for f in formats]
        ax_fmt.bar(np.arange(len(formats)) + c * width, shares, width, label=name)
        qualities = [i.quality for i in group if i.quality is not None]
        if qualities:
            ax_q.hist(qualities, bins=np.arange(0, 102, 2), alpha=0.6, label=name)
        ax_size.scatter(
            [i.width for i in group], [i.height for i in group], s=8, alpha=0.5, label=name
        )
    ax_fmt.set_xticks(np.arange(len(formats)) + width * (len(classes) - 1) / 2, formats)
    ax_fmt.set(title="file format", ylabel="share of class")
    ax_q.set(title="JPEG quality (from quantisation tables)", xlabel="quality", ylabel="images")
    ax_size.set(title="image size", xlabel="width (px)", ylabel="height (px)")
    for ax in (ax_fmt, ax_q, ax_size):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if not any(i.quality is not None for i in good):
        ax_q.text(0.5, 0.5, "no JPEG files", ha="center", va="center", transform=ax_q.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def audit_data(
    data: str | os.PathLike,
    output: str | os.PathLike,
    layout: str = "auto",
    split: str | None = None,
    warn_above: float = 0.2,
    seed: int = 0,
    image_set: ImageSet | None = None,
) -> dict[str, Any]:
    """Audit a data set; writes audit.md, audit.json and audit.png to ``output``.

    ``warn_above``: warn when the metadata baseline beats chance by more than this (accuracy
    points, e.g. 0.2 = 20 points).
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    image_set = image_set or find_images(data, layout, split=split)
    infos = [inspect_file(s.path, s.label, s.subset) for s in image_set.samples]
    rows = summarize(infos, image_set.classes)
    baseline = metadata_baseline(infos, seed=seed)
    shortcut = (
        baseline["accuracy"] is not None and baseline["accuracy"] - baseline["chance"] > warn_above
    )
    plot_audit(infos, image_set.classes, output / "audit.png")
    lines = [
        f"# Data audit: {data}",
        "",
        "| subset | class | n | formats | JPEG quality (median, range) | median size | "
        "short side range | aspect | median KB |",
        "| --- | --- | ---: | --- | --- | --- | --- | ---: | ---: |",
    ]
    for r in rows:
        fmts = ", ".join(f"{k} {v}" for k, v in r["formats"].items())
        q = (
            "-"
            if r["jpeg_quality_median"] is None
            else f"{r['jpeg_quality_median']:.0f} ({r['jpeg_quality_range'][0]}-"
            f"{r['jpeg_quality_range'][1]})"
        )
        lines.append(
            f"| {r['subset']} | {r['class']} | {r['n']} | {fmts} | {q} | "
            f"{r['width_median']:.0f}x{r['height_median']:.0f} | "
            f"{r['short_side_range'][0]}-{r['short_side_range'][1]} | "
            f"{r['aspect_median']:.2f} | {r['kb_median']:.1f} |"
        )
    lines.append("")
    if baseline["accuracy"] is not None:
        lines.append(
            f"Metadata-only baseline (random forest on format, JPEG quality, size, "
            f"bytes; {baseline['folds']}-fold CV): accuracy "
            f"**{100 * baseline['accuracy']:.1f}%** (chance "
            f"{100 * baseline['chance']:.1f}%). Most used: "
            + ", ".join(f"{n} {v:.2f}" for n, v in baseline["top_features"])
            + "."
        )
    if shortcut:
        lines += [
            "",
            "**WARNING: this data can be told apart without looking at the pixels: "
            "align formats before trusting results** (`miragedet evaluate --align "
            "jpeg:96`, `miragedet train --align jpeg:96`).",
        ]
    unreadable = [i for i in infos if i.error]
    if unreadable:
        lines += ["", f"{len(unreadable)} unreadable files (listed in audit.json)."]
    lines += ["", "![audit](audit.png)", ""]
    (output / "audit.md").write_text("\n".join(lines))
    result = {
        "data": data_source(data),
        "layout": image_set.layout,
        "rows": rows,
        "baseline": baseline,
        "shortcut": shortcut,
        "unreadable": [(i.path, i.error) for i in unreadable],
    }
    write_json(result, output / "audit.json")
    return result
