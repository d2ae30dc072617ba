"""Clips scored by their frames: frames forwarded in the shared batches tiles use, aggregated by
the same rules (top-k by default), with a per-frame timeline; a temporal head when present.

A frame is scored under the detector's view (resize: one input; tiles: its tiles, aggregated
into the frame's probabilities first), then the frames' probabilities become the clip's by the
view's ``aggregate`` rule: ``top-k`` averages the log-probabilities of the most suspicious
quarter of the frames, so a generated span of a quarter of the clip is not diluted away by the
real footage around it (the rule and its measurement are the tiles', docs/views.md; for clips,
docs/video.md). With a temporal head in the checkpoint (``train --temporal``), the clip's
probabilities are the head's, which sees the frames' embeddings in order (evidence no single
frame holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.video import Sampling, Video, read_video
from ..data.views import Tiles, View, inputs
from .tiles import aggregate


@dataclass
class VideoInputs:
    """The model inputs of one clip: every frame's inputs stacked, and how many each has."""

    video: Video
    pixels: torch.Tensor  # (sum of units, 3, S, S)
    units: list[int]  # inputs per frame (1 with the resize view)
    tiles: list[Tiles] | None = None  # per frame, with the crop and tiles views


def prepare_video(source: Any, preprocess: Any, view: View, sampling: Sampling) -> VideoInputs:
    """Decode the sampled frames of ``source`` and make each frame's inputs under ``view``."""
    clip = read_video(source, sampling)
    if view.kind == "resize":
        pixels = torch.stack([preprocess(frame) for frame in clip.frames])
        return VideoInputs(clip, pixels, [1] * len(clip.frames))
    tiles = [inputs(frame, preprocess, view) for frame in clip.frames]
    pixels = torch.cat([t.pixels for t in tiles])
    return VideoInputs(clip, pixels, [len(t.pixels) for t in tiles], tiles)


def frame_probs(prepared: VideoInputs, rows: np.ndarray, view: View) -> np.ndarray:
    """Each frame's probabilities (F, C) from its inputs' rows (its tiles aggregated)."""
    if view.kind == "resize":
        return rows
    split = np.split(rows, np.cumsum(prepared.units)[:-1])
    return np.stack([aggregate(part, view.aggregate) for part in split])


def summarize_video(
    prepared: VideoInputs,
    rows: np.ndarray,
    view: View,
    temporal_probs: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any], list[dict[str, Any]]]:
    """The clip's probabilities (C,), its description with the timeline, and its regions (one
    per frame: time, p(fake), and with tiles the most suspicious tile's box)."""
    per_frame = frame_probs(prepared, rows, view)
    probs = aggregate(per_frame, view.aggregate)
    frame_fake = 1.0 - per_frame[:, 0]
    regions: list[dict[str, Any]] = []
    boxes = _top_boxes(prepared, rows) if prepared.tiles is not None else None
    for k, (t, p) in enumerate(zip(prepared.video.times, frame_fake, strict=True)):
        region: dict[str, Any] = {"t": round(float(t), 4), "p": float(p)}
        if boxes is not None:
            region["box"] = boxes[k]
        regions.append(region)
    info = prepared.video.info()
    info["aggregate"] = view.aggregate
    info["frames_fake_prob"] = float(1.0 - probs[0])
    if temporal_probs is not None:
        info["temporal_fake_prob"] = float(1.0 - temporal_probs[0])
        probs = temporal_probs
    return probs, info, regions


def _top_boxes(prepared: VideoInputs, rows: np.ndarray) -> list[list[int]]:
    split = np.split(1.0 - rows[:, 0], np.cumsum(prepared.units)[:-1])
    return [
        list(tiles.boxes[int(np.argmax(part))])
        for tiles, part in zip(prepared.tiles or [], split, strict=True)
    ]
