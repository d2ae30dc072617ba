"""Metrics of scores against labels (scikit-learn): accuracy, real/fake accuracy, AP, AUC per
subset and their mean, verdict flips between two scorings, the confusion matrix.

Fake is the positive class. Both per-class accuracies are always reported: a detector can look
good on average while failing one class (method.md, Chameleon).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, confusion_matrix, roc_auc_score

from .scores import Scores

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


def confusion(scores: Scores, classes: list[str]) -> np.ndarray:
    ok = scores.ok
    pred = scores.probs[ok].argmax(axis=1)
    return confusion_matrix(scores.labels[ok], pred, labels=list(range(len(classes))))
