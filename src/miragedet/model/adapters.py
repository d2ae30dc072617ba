"""Generator adapters and the open-set test: what few-shot adaptation adds to a trained detector.

Both work in the detector's *adaptation feature space*: after every vision layer, its class
token and the mean of its patch tokens, then the unit image embedding, concatenated
(:func:`feature_dim`). Intermediate layers carry more of a generator's low-level trace than the
final embedding alone (RINE, Koutlis & Papadopoulos, ECCV 2024), and the patch mean sees a trace
spread over the whole image; measured in docs/adapt.md.

- An **adapter** is one new generator as a linear discriminant in that space (Fisher's LDA:
  ``w = S^-1 (mu_gen - mu_real)``, ``S`` the shrunk within-class covariance), giving the
  log-odds "this generator vs real" of an image. Its class keeps the base model's evidence and
  gains the adapter's: ``logit_c <- logaddexp(logit_c, logit_real + log_odds)`` (the odds of a
  class that is a mixture of sources add up), so what the base model detected stays detected.
- The **open set** (attribution models) is the Mahalanobis distance of an image to the nearest
  known class mean under the same shrunk covariance (Lee et al., NeurIPS 2018), with a threshold
  calibrated on held-out images of the known classes: beyond it, "unknown generator".

The covariance is kept as ``S^-1 = (I - V^T V) / a`` (rank-N plus identity, Woodbury), so a
ViT-L/14's 25k-dimensional space never needs a 25k x 25k matrix.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: What an image is called when the open-set test finds it far from every known class.
UNKNOWN = "unknown generator"


def feature_dim(vision_hidden: int, vision_layers: int, projection_dim: int) -> int:
    """Size of the adaptation feature space: per vision layer its class token and patch mean,
    then the embedding."""
    return 2 * vision_hidden * vision_layers + projection_dim


class Adapters(nn.Module):
    """Linear discriminants, one per adapted generator: ``log_odds = features @ weight.T + bias``.

    ``specs``: one dict per adapter, ``{"name": generator, "class": the class it adds to}``.
    """

    def __init__(self, specs: list[dict[str, Any]], dim: int) -> None:
        super().__init__()
        self.specs = [dict(s) for s in specs]
        self.register_buffer("weight", torch.zeros(len(specs), dim))
        self.register_buffer("bias", torch.zeros(len(specs)))

    def log_odds(self, features: torch.Tensor) -> torch.Tensor:
        """(B, M): each adapter's log-odds of its generator against real."""
        # fp32 whatever precision the network runs in: the discriminants are a few numbers
        return features.float() @ self.weight.float().t() + self.bias.float()

    def combine(
        self, logits: torch.Tensor, features: torch.Tensor, classes: list[str]
    ) -> torch.Tensor:
        """``logits`` (B, C) with each adapter's evidence added to its class (see the module)."""
        odds = self.log_odds(features)
        out = logits.clone()
        for j, spec in enumerate(self.specs):
            c = classes.index(spec["class"])
            out[:, c] = torch.logaddexp(out[:, c], logits[:, 0] + odds[:, j])
        return out


class OpenSet(nn.Module):
    """Mahalanobis distance to the nearest known class mean (see the module)."""

    def __init__(
        self, n_classes: int, rank: int, dim: int, threshold: float = float("inf")
    ) -> None:
        super().__init__()
        self.register_buffer("means", torch.zeros(n_classes, dim))
        self.register_buffer("basis", torch.zeros(rank, dim))  # V of S^-1 = (I - V^T V) / a
        self.register_buffer("scale", torch.ones(()))  # a
        self.threshold = float(threshold)

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """(B,): the Mahalanobis distance to the nearest class mean."""
        diff = features.float()[:, None, :] - self.means.float()[None]  # (B, C, D)
        plain = (diff**2).sum(-1)
        low = ((diff @ self.basis.float().t()) ** 2).sum(-1)
        return ((plain - low).clamp_min(0) / self.scale.float()).sqrt().min(dim=1).values


def whitener(centred: torch.Tensor, shrinkage: float) -> tuple[torch.Tensor, float]:
    """``(V, a)`` with ``S^-1 = (I - V^T V) / a`` for the covariance of ``centred`` (N, D) rows
    shrunk towards a scaled identity: ``S = (1 - shrinkage) X^T X / N + shrinkage * mu * I``."""
    n, d = centred.shape
    x = centred.double()
    mu = float((x**2).sum() / (n * d))
    a = max(shrinkage * mu, 1e-12)
    b = (1.0 - shrinkage) / n
    # Woodbury: (a I + b X^T X)^-1 = (I - X^T (a/b I + X X^T)^-1 X) / a
    gram = x @ x.t()
    inner = torch.linalg.inv(gram + (a / b) * torch.eye(n, dtype=x.dtype)) if b > 0 else None
    if inner is None:
        return torch.zeros(0, d), a
    vals, vecs = torch.linalg.eigh((inner + inner.t()) / 2)
    root = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.t()
    return (root @ x).float(), a


def solve(v: torch.Tensor, basis: torch.Tensor, scale: float) -> torch.Tensor:
    """``S^-1 v`` for the whitener ``(basis, scale)`` of :func:`whitener`."""
    v = v.float()
    return (v - (v @ basis.t()) @ basis) / scale
