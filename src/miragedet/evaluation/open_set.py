"""The open-set report of an adapted attribution model: how often each known class is called an
"unknown generator", how often images of generators it does not know are, and the open-set
AUROC (known against unknown, by the distance to the nearest known class; docs/adapt.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from .scores import Scores


def open_set_report(
    known: Scores, classes: list[str], threshold: float, unknown: Scores | None = None
) -> dict[str, Any]:
    """Unknown rate per known class (and on ``unknown``'s generated images), and the AUROC of the
    distance separating the known images from the unknown generators' (both scored with the
    distance: :func:`~miragedet.evaluation.scores.score_samples` of an open-set model)."""
    d_known = known.distance
    labels = known.labels
    per_class = {
        name: float(np.nanmean(d_known[labels == c] > threshold))
        for c, name in enumerate(classes)
        if np.isfinite(d_known[labels == c]).any()
    }
    report: dict[str, Any] = {"threshold": threshold, "unknown_rate": per_class}
    if unknown is not None:
        fakes = unknown.labels != 0  # the unknown generators' images
        d_new = unknown.distance[fakes & np.isfinite(unknown.distance)]
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
