"""Train the temporal head (model/temporal.py) of a detector on labelled clips: `train --temporal`.

The detector's prompts stay as trained (on images or frames); its frozen per-frame embeddings of
each training clip, in order, and the frames' own aggregate are computed once, then the small
head learns from them (AdamW, full passes over the clips' features, seeded). The result is the
base checkpoint plus the head, written as a new checkpoint whose clips are then scored through
it on every surface (PyTorch engine, resize view).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.tiles import aggregate
from ..model.temporal import TemporalHead, TemporalSpec


@dataclass(frozen=True)
class TemporalConfig:
    #: Frames per clip, evenly spread (the head scores clips sampled the same way).
    frames: int = 16
    hidden: int = 64
    #: Passes over the training clips' features. Our choice: 300 (features are precomputed, a
    #: pass over a thousand clips takes milliseconds; the loss has flattened well before).
    epochs: int = 300
    lr: float = 3e-3
    weight_decay: float = 1e-2
    seed: int = 0


def video_features(
    detector: Any, paths: list[str], on_clip: Callable[[int], None] | None = None
) -> tuple[list[np.ndarray], np.ndarray, list[tuple[str, str]]]:
    """Per readable clip its frame embeddings (T, D) and the frames' aggregate probabilities
    (C,); the clips that could not be read, with the reason (they are left out)."""
    from ..inference.videos import prepare_video

    embeds, priors, failed = [], [], []
    for k, path in enumerate(paths):
        try:
            prepared = prepare_video(
                path, detector.preprocess, detector.view, detector.video_sampling
            )
        except ValueError as exc:
            failed.append((path, str(exc)))
            continue
        probs, e = detector.forward_embeds(prepared.pixels)
        embeds.append(e)
        priors.append(aggregate(probs, detector.view.aggregate))
        if on_clip is not None:
            on_clip(k)
    return embeds, np.array(priors), failed


def _batch(embeds: list[np.ndarray]) -> torch.Tensor:
    """Clips of different lengths as one (N, T, D) batch, short ones padded with their last
    frame (no change from it: the head sees a still)."""
    length = max(len(e) for e in embeds)
    rows = [np.concatenate([e, np.repeat(e[-1:], length - len(e), axis=0)]) for e in embeds]
    return torch.as_tensor(np.stack(rows), dtype=torch.float32)


def fit_head(
    embeds: list[np.ndarray], priors: np.ndarray, labels: list[int], classes: int,
    config: TemporalConfig,
) -> tuple[TemporalHead, list[float]]:  # fmt: skip
    """A temporal head trained on clips' features; its loss per epoch."""
    torch.manual_seed(config.seed)
    spec = TemporalSpec(hidden=config.hidden, frames=config.frames)
    head = TemporalHead(embeds[0].shape[1], classes, spec)
    x = _batch(embeds)
    prior = torch.log(torch.as_tensor(priors, dtype=torch.float32).clamp_min(1e-12))
    y = torch.as_tensor(labels, dtype=torch.long)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history = []
    head.train()
    for _ in range(config.epochs):
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x, prior), y)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return head.eval(), history


def train_temporal(
    base: str | os.PathLike,
    data: str | os.PathLike,
    output: str | os.PathLike,
    config: TemporalConfig | None = None,
    layout: str = "auto",
    split: str | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Add a temporal head trained on the clips of ``data`` (any layout; a label per clip) to
    the checkpoint ``base``, written to ``output``. Returns a report (clips, loss, accuracy of
    frames alone and with the head on the training clips)."""
    from ..data.layouts import find_images
    from ..inference.detector import Detector
    from ..model.checkpoint import save_pretrained
    from ..model.mirage import load_pretrained

    config = config or TemporalConfig()
    model = load_pretrained(base)
    if model.backbone.preprocess.view != "resize":
        raise ValueError("the temporal head works with the resize view (as the checkpoint's)")
    found = find_images(data, layout, split=split)
    paths = [str(s.path) for s in found.samples]
    labels = [s.label for s in found.samples]
    if len(found.classes) != len(model.classes):
        raise ValueError(f"the data has classes {found.classes}; the model {model.classes}")
    detector = Detector(model, precision="fp32", frames=config.frames)
    embeds, priors, failed = video_features(detector, paths)
    kept = [label for path, label in zip(paths, labels, strict=True)
            if path not in dict(failed)]  # fmt: skip
    if len(set(kept)) < 2:
        raise ValueError(f"need readable clips of at least two classes in {data}")
    head, history = fit_head(embeds, priors, kept, len(model.classes), config)
    with torch.no_grad():
        logits = head(_batch(embeds), torch.log(torch.as_tensor(priors).float().clamp_min(1e-12)))
    frames_acc = float(np.mean(priors.argmax(axis=1) == np.array(kept)))
    temporal_acc = float(np.mean(logits.argmax(dim=1).numpy() == np.array(kept)))
    model.config.temporal = asdict(TemporalSpec(hidden=config.hidden, frames=config.frames))
    model.temporal = head
    report = {
        "clips": len(kept),
        "unreadable": failed,
        "loss": history[-1],
        "train_accuracy_frames": frames_acc,
        "train_accuracy_temporal": temporal_acc,
        "config": asdict(config),
    }
    metadata = {"temporal": {**report, "base": str(base), "data": str(data)}}
    if model.lineage:
        metadata["lineage"] = model.lineage
    save_pretrained(model, Path(output), threshold=model.threshold, metadata=metadata)
    return report
