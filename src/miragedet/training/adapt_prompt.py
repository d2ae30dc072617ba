"""Prompt adaptation: the prompts tuned on the K shots, old knowledge protected by replay and
distillation (docs/adapt.md).

Each step trains on a batch of the shots and of replayed old images (a sample of
``--old-data``) with MiraGe's own loss (cross-entropy + the discriminative term), plus the
distillation of Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2018): the KL
divergence from the base model's class probabilities on the replayed images, so the prompts
move only where the new generator needs them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..data.layouts import Sample
from ..model.config import LossConfig
from ..model.losses import MiraGeLoss
from ..model.mirage import MiraGe
from .config import OptimConfig
from .step import make_optimizer

#: Weight of the distillation term. Our choice: 1.0 (LwF's lambda_o = 1).
DISTILL = 1.0


def _pixels(model: MiraGe, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data.dataset import load_image

    preprocess = model.backbone.preprocess
    images = [preprocess(load_image(s.path)) for s in samples]
    return torch.stack(images), torch.tensor([min(s.label, 1) for s in samples])


def tune(
    model: MiraGe, base: MiraGe, shots: list[Sample], replay: list[Sample], config: Any
) -> None:
    """Tune ``model``'s prompts in place (``config``: an AdaptConfig)."""
    device = model.clip.logit_scale.device
    new_x, new_y = (t.to(device) for t in _pixels(model, shots))
    old_x, old_y = (t.to(device) for t in _pixels(model, replay))
    base.eval()
    with torch.no_grad():
        teacher = F.softmax(base(old_x).logits, dim=-1)
    loss_fn = MiraGeLoss(
        LossConfig.for_method(model.config.method, bank_size=0),
        model.clip.config.projection_dim,
    )
    optimizer = make_optimizer(model, OptimConfig(lr=config.lr))
    generator = torch.Generator().manual_seed(config.seed)
    half = max(1, config.batch_size // 2)
    for _ in range(config.steps):
        i = torch.randint(len(new_x), (min(half, len(new_x)),), generator=generator)
        j = torch.randint(len(old_x), (min(half, len(old_x)),), generator=generator)
        model.train()
        pixels, labels = torch.cat([new_x[i], old_x[j]]), torch.cat([new_y[i], old_y[j]])
        out = model(pixels)
        loss = loss_fn(out.logits, out.image_embeds, out.text_embeds, labels).loss
        replayed = F.log_softmax(out.logits[len(i) :], dim=-1)
        loss = loss + DISTILL * F.kl_div(replayed, teacher[j], reduction="batchmean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
