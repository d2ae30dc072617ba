"""One optimisation step of a MiraGe model, its optimiser and schedule, and a small in-memory
loop over tensors (quickstart, tests, demos)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model.losses import MiraGeLoss
from ..model.mirage import MiraGe
from .config import OptimConfig


@dataclass
class StepResult:
    loss: float
    ce: float
    dis: float
    accuracy: float


def trainable_parameters(model: MiraGe) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"method {model.config.method!r} has nothing to train")
    return params


def make_optimizer(model: MiraGe, optim: OptimConfig) -> torch.optim.SGD:
    """SGD with momentum over the trainable tensors only (section 6.1)."""
    return torch.optim.SGD(
        trainable_parameters(model),
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
    )


def train_step(
    model: MiraGe,
    loss_fn: MiraGeLoss,
    optimizer: torch.optim.Optimizer,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    adversary: Callable[..., torch.Tensor] | None = None,
    seed: int = 0,
) -> StepResult:
    """Forward, loss (CE + lambda * L_dis, bank update), backward and one optimizer step.
    With ``adversary`` (:class:`miragedet.inference.attacks.Adversary`) part of the batch is
    first replaced by adversarial examples against the current model (drawn from ``seed``)."""
    if adversary is not None:
        pixel_values = adversary(model, pixel_values, labels, seed)
    model.train()
    out = model(pixel_values)
    losses = loss_fn(out.logits, out.image_embeds, out.text_embeds, labels)
    optimizer.zero_grad(set_to_none=True)
    losses.loss.backward()
    optimizer.step()
    with torch.no_grad():
        accuracy = (out.logits.argmax(dim=1) == labels).float().mean()
        return StepResult(losses.loss.item(), losses.ce.item(), losses.dis.item(), accuracy.item())


def fit_tensors(
    model: MiraGe,
    loss_fn: MiraGeLoss,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    optim: OptimConfig,
    steps: int,
    seed: int = 0,
    on_step: Callable[[int, StepResult], None] | None = None,
    adversary: Callable[..., torch.Tensor] | None = None,
) -> list[StepResult]:
    """Train for ``steps`` SGD steps on shuffled mini-batches of in-memory tensors (with
    ``adversary``: adversarial training, see :func:`train_step`)."""
    optimizer = make_optimizer(model, optim)
    generator = torch.Generator().manual_seed(seed)
    n = pixel_values.shape[0]
    order = torch.randperm(n, generator=generator)
    cursor = 0
    history = []
    for step in range(steps):
        if cursor + optim.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor : cursor + optim.batch_size]
        cursor += optim.batch_size
        result = train_step(
            model, loss_fn, optimizer, pixel_values[idx], labels[idx], adversary, seed + step
        )
        history.append(result)
        if on_step is not None:
            on_step(step, result)
    return history


@torch.inference_mode()
def predict_fake_prob(
    model: MiraGe, pixel_values: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """p(fake) for each image of a preprocessed batch, in chunks of ``batch_size``."""
    model.eval()
    chunks = [
        model(pixel_values[i : i + batch_size]).fake_prob
        for i in range(0, pixel_values.shape[0], batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0)


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up, then cosine annealing to 0 (section 6.1)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
