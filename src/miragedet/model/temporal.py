"""The temporal head: a small 1-D convolution over a clip's frozen per-frame embeddings, in order.

Frame detectors see each frame alone; what only time shows (flicker, frames that do not follow
from one another) lives in how the embeddings change from frame to frame. Following the video
detectors that put a light temporal model on frozen per-frame features (DeMamba, "DeMamba: AI-
Generated Video Detection on Million-Scale GenVideo Benchmark", Chen et al. 2024; UNITE, Kundu
et al., CVPR 2025), the head reads, per frame, the unit embedding and its change from the
previous frame, through two convolutions over time, pooled by mean and max. Its logits are added
to the log-probabilities the frames give by themselves (the clip's aggregate), so it learns only
what time adds: a clip whose frames are plainly generated stays flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TemporalSpec:
    """The head's shape (stored in the checkpoint's model config as ``temporal``)."""

    #: Channels of the convolutions. Our choice: 64 (a few thousand weights per input dim;
    #: trained from tens of clips without overfitting in tests/test_video.py).
    hidden: int = 64
    #: Frames each convolution sees (3: a frame and its neighbours, the span of a flicker).
    kernel: int = 3
    #: Frames the head was trained on (clips are sampled the same way when it scores them).
    frames: int = 16

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemporalSpec:
        return cls(**{k: data[k] for k in ("hidden", "kernel", "frames") if k in data})


class TemporalHead(nn.Module):
    """(B, T, D) frame embeddings -> (B, C) logits to add to the frames' log-probabilities."""

    def __init__(self, dim: int, classes: int, spec: TemporalSpec | None = None) -> None:
        super().__init__()
        spec = spec or TemporalSpec()
        pad = spec.kernel // 2
        self.conv1 = nn.Conv1d(2 * dim, spec.hidden, spec.kernel, padding=pad)
        self.conv2 = nn.Conv1d(spec.hidden, spec.hidden, spec.kernel, padding=pad)
        self.out = nn.Linear(2 * spec.hidden, classes)
        nn.init.zeros_(self.out.weight)  # starts as "time adds nothing"
        nn.init.zeros_(self.out.bias)

    def forward(self, embeds: torch.Tensor, frame_log_probs: torch.Tensor) -> torch.Tensor:
        """Video logits: the head's evidence plus ``frame_log_probs`` (B, C), the frames' own."""
        embeds = F.normalize(embeds.float(), dim=-1)
        change = torch.diff(embeds, dim=1, prepend=embeds[:, :1])
        x = torch.cat([embeds, change], dim=-1).transpose(1, 2)  # (B, 2D, T)
        x = x.to(self.conv1.weight.dtype)  # the head may run in the detector's bf16/fp16
        x = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        pooled = torch.cat([x.mean(dim=-1), x.amax(dim=-1)], dim=-1)
        return self.out(pooled).float() + frame_log_probs.float()
