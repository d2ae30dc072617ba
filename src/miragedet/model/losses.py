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

from . import distributed
from .config import LossConfig


def discriminative_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    bank_features: torch.Tensor | None = None,
    bank_labels: torch.Tensor | None = None,
    tau: float = 0.07,
    anchors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised-contrastive loss of eq. 5 over anchors ``features`` (N, D), unit vectors.

    Every anchor i is contrasted with A(i) = (features U bank) minus i; its positives P(i) are
    the members of A(i) with its label. The loss is the mean over anchors that have at least one
    positive of -1/|P(i)| sum_p log softmax_{A(i)}(z_i . z_p / tau). Bank entries are treated as
    constants (no gradient flows into them).

    ``anchors`` (indices into ``features``) restricts the sum to those anchors while keeping the
    denominator of the full mean: the shares of disjoint anchor sets add up to the full loss.
    This is how ranks of a distributed run split the work (see :mod:`miragedet.model.distributed`).
    """
    if bank_features is not None and bank_features.numel():
        others = torch.cat([features, bank_features.detach().to(features.dtype)])
        other_labels = torch.cat([labels, bank_labels.to(labels.device)])
    else:
        others, other_labels = features, labels
    n = features.shape[0]
    # Anchors with at least one positive, over the full set (labels only, no features needed).
    n_pos_all = (labels[:, None] == other_labels[None, :]).sum(dim=1) - 1
    count = (n_pos_all > 0).sum()
    if count == 0:
        return features.sum() * 0.0
    idx = torch.arange(n, device=features.device) if anchors is None else anchors
    sim = features[idx] @ others.t() / tau  # (A, N + K)
    is_self = torch.zeros_like(sim, dtype=torch.bool)
    is_self[torch.arange(idx.shape[0], device=sim.device), idx] = True
    positive = (labels[idx, None] == other_labels[None, :]) & ~is_self
    sim = sim.masked_fill(is_self, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    n_pos = positive.sum(dim=1)
    pos_log_prob = log_prob.masked_fill(~positive, 0.0).sum(dim=1)
    per_anchor = torch.where(n_pos > 0, pos_log_prob / n_pos.clamp(min=1), 0.0)
    return -per_anchor.sum() / count


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
        if distributed.active():
            return self._forward_distributed(logits, image_embeds, text_embeds, labels, update_bank)
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

    def _forward_distributed(
        self,
        logits: torch.Tensor,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        labels: torch.Tensor,
        update_bank: bool,
    ) -> LossOutput:
        """This rank's share of the loss of the global batch (all ranks' images).

        The shares of all ranks add up to the single-process loss of the concatenated batch:
        CE is summed locally and divided by the global batch size; the discriminative loss sums
        this rank's anchors (the text anchors count on rank 0) against the gathered global set,
        divided by the global number of anchors. Gradients of the gathered embeddings flow back
        to the rank that owns them.
        """
        rank = torch.distributed.get_rank()
        sizes = distributed.gathered_sizes(labels.shape[0], labels.device)
        total = sum(sizes)
        all_feats = distributed.interleave(
            distributed.gather_with_grad(image_embeds.contiguous(), sizes), sizes
        )
        all_labels = distributed.interleave(distributed.gather(labels, sizes), sizes)
        ce = F.cross_entropy(logits, labels, reduction="sum") / max(total, 1)
        dis = ce.new_zeros(())
        if self.config.lambda_dis > 0:
            feats, labs = all_feats, all_labels
            anchors = distributed.local_positions(sizes, rank, labels.device)
            if self.config.text_anchors:
                classes = torch.arange(text_embeds.shape[0], device=labels.device)
                feats = torch.cat([all_feats, text_embeds.to(all_feats.dtype)])
                labs = torch.cat([all_labels, classes])
                if rank == 0:
                    anchors = torch.cat([anchors, total + classes])
            bank_feats, bank_labels = self.bank.contents()
            dis = discriminative_loss(
                feats.float(), labs, bank_feats, bank_labels, self.config.tau, anchors=anchors
            )
        if update_bank:
            self.bank.push(all_feats, all_labels)
        return LossOutput(loss=ce + self.config.lambda_dis * dis, ce=ce, dis=dis)
