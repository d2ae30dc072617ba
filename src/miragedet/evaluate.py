"""Metrics of a detector (scikit-learn): accuracy, real/fake accuracy, AP, ROC AUC.

Fake is the positive class. Both per-class accuracies are always reported: a detector can look
good on average while failing one class (method.md, Chameleon).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score


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
