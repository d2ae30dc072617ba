"""The open-set report of an adapted attribution model: how often each known class is called an
"unknown generator", how often images of generators it does not know are, and the open-set
AUROC (known against unknown, by the distance to the nearest known class; docs/adapt.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ..data.layouts import Sample


@torch.inference_mode()
def distances(model: Any, samples: list[Sample], batch_size: int = 64) -> np.ndarray:
    """Each sample's distance to the nearest known class (NaN where unreadable)."""
    from ..data.dataset import ImageDataset, collate

    preprocess = model.backbone.preprocess
    dataset = ImageDataset(samples, lambda image, i: preprocess(image))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    out = np.full(len(samples), np.nan)
    device = model.clip.logit_scale.device
    model.eval()
    for batch in loader:
        if len(batch["indices"]):
            result = model(batch["pixel_values"].to(device))
            out[batch["indices"].numpy()] = result.distance.float().cpu().numpy()
    return out


def open_set_report(
    model: Any,
    known: list[Sample],
    classes: list[str],
    unknown: list[Sample] | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Unknown rate per known class (and on ``unknown``), and the AUROC of the distance."""
    threshold = model.open_set.threshold
    d_known = distances(model, known, batch_size)
    labels = np.array([s.label for s in known])
    per_class = {
        name: float(np.nanmean(d_known[labels == c] > threshold))
        for c, name in enumerate(classes)
        if np.isfinite(d_known[labels == c]).any()
    }
    report: dict[str, Any] = {"threshold": threshold, "unknown_rate": per_class}
    if unknown:
        d_unknown = distances(model, unknown, batch_size)
        fakes = np.array([s.label != 0 for s in unknown])  # the unknown generators' images
        d_new = d_unknown[fakes & np.isfinite(d_unknown)]
        d_old = d_known[np.isfinite(d_known)]
        report["unknown_rate"]["unknown generators"] = float(np.mean(d_new > threshold))
        y = np.r_[np.zeros(len(d_old)), np.ones(len(d_new))]
        report["auroc"] = float(roc_auc_score(y, np.r_[d_old, d_new])) if len(d_new) else None
    return report


def markdown(report: dict[str, Any]) -> list[str]:
    """The report's lines for report.md."""
    lines = [
        "## Open set: unknown generators",
        "",
        f"Distance threshold {report['threshold']:.4g} (calibrated when the model was adapted).",
        "",
        "| images | called unknown |",
        "| --- | ---: |",
    ]
    lines += [f"| {k} | {100 * v:.1f}% |" for k, v in report["unknown_rate"].items()]
    if report.get("auroc") is not None:
        lines += ["", f"Open-set AUROC (known against unknown generators): {report['auroc']:.3f}"]
    return [*lines, ""]
