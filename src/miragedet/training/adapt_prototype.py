"""Prototype adaptation: a new generator learned from K shots with no gradient (docs/adapt.md).

The shots' mean in the detector's adaptation feature space is the generator's prototype; the
real class's prototype is the mean of the known real images. Distances are measured with the
within-class covariance of the known images (the feature memory: the old data's images and the
shots), shrunk towards a scaled identity by the Ledoit-Wolf rule (Ledoit & Wolf, 2004; computed
as scikit-learn's ``ledoit_wolf_shrinkage`` does, through the Gram matrix): that metric makes
the prototypes work where plain nearest-mean does not, because a generator's trace is a small,
consistent shift beside large scene variation.
The result is Fisher's linear discriminant between the two prototypes, an adapter
(:class:`miragedet.model.adapters.Adapters`) deciding at their midpoint, its bias raised if more
than ``fpr_budget`` of the known real images would cross it (never lowered: the known reals also
shaped the covariance, so their own false-alarm rate is optimistic).
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.adapters import solve, whitener

#: Share of the known real images an adapter may newly call fake. Our choice: 0.5%, half the
#: default forgetting guard of 1 point (docs/adapt.md has the measurement).
FPR_BUDGET = 0.005


def shrinkage(centred: torch.Tensor) -> float:
    """The Ledoit-Wolf shrinkage intensity of these centred rows (N, D).

    scikit-learn's ``ledoit_wolf_shrinkage`` (the reference: tests/test_adapt.py checks the two
    agree) sums blocks of the D x D matrix ``X^T X``: for a ViT-L/14's D = 49,920 features and a
    few hundred images that is ~10^12 operations. The same two sums come from the N x N Gram
    matrix: ``sum((X^T X)^2) = sum((X X^T)^2)`` and ``sum((X^2)^T X^2) = sum_i |x_i|^4``."""
    x = centred.double()
    n, d = x.shape
    norms = (x**2).sum(dim=1)  # |x_i|^2
    trace = float(norms.sum()) / n  # trace of the empirical covariance
    mu = trace / d
    beta_ = float((norms**2).sum())
    delta_ = float(((x @ x.t()) ** 2).sum()) / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


def within_class(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rows minus their class's mean."""
    out = features.clone().float()
    for label in labels.unique():
        mask = labels == label
        out[mask] -= out[mask].mean(dim=0)
    return out


def fit_adapter(
    memory: torch.Tensor,
    memory_labels: torch.Tensor,
    shots: torch.Tensor,
    fpr_budget: float = FPR_BUDGET,
) -> tuple[torch.Tensor, float]:
    """``(weight, bias)`` of the discriminant "new generator vs real".

    ``memory`` (N, F) with ``memory_labels`` (0 real, anything else another known class) gives
    the covariance and the real prototype; ``shots`` (K, F) are the new generator's images.
    """
    if not (memory_labels == 0).any():
        raise ValueError("the feature memory holds no real image: pass --old-data with reals")
    labels = torch.cat([memory_labels, torch.full((len(shots),), -1, dtype=memory_labels.dtype)])
    rows = torch.cat([memory.float(), shots.float()])
    centred = within_class(rows, labels)
    basis, scale = whitener(centred, shrinkage(centred))
    mu_real = memory[memory_labels == 0].float().mean(dim=0)
    mu_new = shots.float().mean(dim=0)
    weight = solve(mu_new - mu_real, basis, scale)
    bias = -float(weight @ (mu_new + mu_real)) / 2
    reals = memory[memory_labels == 0].float() @ weight + bias
    edge = float(np.quantile(reals.numpy(), 1.0 - fpr_budget))
    return weight, bias - max(edge, 0.0)
