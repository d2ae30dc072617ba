"""MiraGe's loss: cross-entropy + lambda x the discriminative loss (paper eq. 5, appendix C, D).

The discriminative loss is supervised-contrastive over Z = {batch image embeddings} U {class text
embeddings, labelled with their class}, contrasted against Z U M where M is a FIFO memory bank of
detached past image embeddings with their labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig


def discriminative_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    bank_features: torch.Tensor | None = None,
    bank_labels: torch.Tensor | None = None,
    tau: float = 0.07,
) -> torch.Tensor:
    """Supervised-contrastive loss of eq. 5 over anchors ``features`` (N, D), unit vectors.

    Every anchor i is contrasted with A(i) = (features U bank) minus i; its positives P(i) are
    the members of A(i) with its label. The loss is the mean over anchors that have at least one
    positive of -1/|P(i)| sum_p log softmax_{A(i)}(z_i . z_p / tau). Bank entries are treated as
    constants (no gradient flows into them).
    """
    if bank_features is not None and bank_features.numel():
        others = torch.cat([features, bank_features.detach().to(features.dtype)])
        other_labels = torch.cat([labels, bank_labels.to(labels.device)])
    else:
        others, other_labels = features, labels
    n = features.shape[0]
    sim = features @ others.t() / tau  # (N, N + K)
    not_self = torch.ones_like(sim, dtype=torch.bool)
    not_self[:, :n].fill_diagonal_(False)
    positive = (labels[:, None] == other_labels[None, :]) & not_self
    sim = sim.masked_fill(~not_self, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    n_pos = positive.sum(dim=1)
    has_pos = n_pos > 0
    if not has_pos.any():
        return features.sum() * 0.0
    pos_log_prob = log_prob.masked_fill(~positive, 0.0).sum(dim=1)
    return -(pos_log_prob[has_pos] / n_pos[has_pos]).mean()


class MemoryBank(nn.Module):
    """A FIFO queue of at most K (embedding, label) pairs, kept without gradient (appendix D)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("features", torch.zeros(size, dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # pushed so far
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next write slot

    def __len__(self) -> int:
        return int(min(int(self.count), self.size))

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Enqueue a batch (oldest entries are overwritten first once the bank is full)."""
        if self.size == 0:
            return
        features = features.detach()[-self.size :]
        labels = labels.detach()[-self.size :]
        idx = (int(self.ptr) + torch.arange(features.shape[0], device=self.ptr.device)) % self.size
        self.features[idx] = features.to(self.features.dtype)
        self.labels[idx] = labels.to(self.labels.device)
        self.ptr.fill_((int(self.ptr) + features.shape[0]) % self.size)
        self.count.add_(features.shape[0])

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored entries, oldest first: (features (k, D), labels (k,)), k = len(self)."""
        k = len(self)
        if k < self.size:
            return self.features[:k], self.labels[:k]
        order = (int(self.ptr) + torch.arange(self.size, device=self.ptr.device)) % self.size
        return self.features[order], self.labels[order]


@dataclass
class LossOutput:
    loss: torch.Tensor
    ce: torch.Tensor
    dis: torch.Tensor


class MiraGeLoss(nn.Module):
    """L = CE(logits, y) + lambda * L_dis(images U text anchors, with the memory bank)."""

    def __init__(self, config: LossConfig, dim: int) -> None:
        super().__init__()
        self.config = config
        self.bank = MemoryBank(config.bank_size, dim)

    def forward(
        self,
        logits: torch.Tensor,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        labels: torch.Tensor,
        update_bank: bool = True,
    ) -> LossOutput:
        ce = F.cross_entropy(logits, labels)
        dis = ce.new_zeros(())
        if self.config.lambda_dis > 0:
            feats, labs = image_embeds, labels
            if self.config.text_anchors:
                classes = torch.arange(text_embeds.shape[0], device=labels.device)
                feats = torch.cat([image_embeds, text_embeds.to(image_embeds.dtype)])
                labs = torch.cat([labels, classes])
            bank_feats, bank_labels = self.bank.contents()
            dis = discriminative_loss(feats.float(), labs, bank_feats, bank_labels, self.config.tau)
        if update_bank:
            self.bank.push(image_embeds, labels)
        return LossOutput(loss=ce + self.config.lambda_dis * dis, ce=ce, dis=dis)
