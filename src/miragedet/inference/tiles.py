"""Tile scoring: tiles forwarded in shared batches, their scores aggregated and mapped (where)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..data.views import Tiles, View

#: ``top-k`` averages this share of the tiles (the most suspicious ones; at least one).
TOP_K_SHARE = 0.25


def aggregate(probs: np.ndarray, rule: str) -> np.ndarray:
    """One probability vector (C,) from the tiles' (n, C).

    ``top-k`` (the default, :class:`~miragedet.data.views.View`): the mean of the
    log-probabilities of the most suspicious quarter of the tiles (at least one), then softmax;
    ``mean-logit``: the same mean over every tile (a fake region of a quarter of the image is
    diluted away); ``max``: the most suspicious tile alone (a real photo's score then rises with
    its number of tiles). The default was chosen by measurement on synthetic full and partial
    fakes (``python benchmarks/aggregate_study.py``, docs/views.md)."""
    if len(probs) == 1:
        return probs[0]
    if rule == "max":
        return probs[int(np.argmax(1.0 - probs[:, 0]))]
    if rule == "top-k":
        k = max(1, math.ceil(TOP_K_SHARE * len(probs)))
        probs = probs[np.argsort(probs[:, 0], kind="stable")[:k]]  # lowest p(real) first
    log = np.log(np.clip(probs, 1e-12, 1.0)).mean(axis=0)
    log -= log.max()
    out = np.exp(log)
    return out / out.sum()


def summarize(tiles: Tiles, probs: np.ndarray, view: View) -> tuple[np.ndarray, dict[str, Any]]:
    """One image's tile probabilities (n, C) as its aggregated probabilities (C,) and its
    where-map (with the view and rule that made it): what the API, CLI and server report."""
    where = where_map(tiles, 1.0 - probs[:, 0])
    where["view"], where["aggregate"] = view.kind, view.aggregate
    return aggregate(probs, view.aggregate), where


def forward_tiles(
    forward: Callable[[torch.Tensor], np.ndarray], tile_sets: list[torch.Tensor], batch_size: int
) -> list[np.ndarray]:
    """Several images' tiles forwarded together, ``batch_size`` tiles per call of ``forward``
    (tiles -> (n, C) probabilities): one (n_i, C) array per image, in order."""
    flat = torch.cat(tile_sets)
    per_tile = np.concatenate(
        [forward(flat[i : i + batch_size]) for i in range(0, len(flat), batch_size)]
    )
    return np.split(per_tile, np.cumsum([len(t) for t in tile_sets])[:-1])


def where_map(tiles: Tiles, fake_probs: np.ndarray) -> dict[str, Any]:
    """The per-tile p(fake) as scored regions, one per tile scored: ``{"box": [left, top,
    right, bottom], "p": p}`` in the image as tiled (``size``), ``covered`` saying whether the
    tiles cover every pixel. The same compact shape as a clip's timeline (docs/video.md): a
    thinned 2478 x 1332 image gives its 16 regions, not a 56 x 103 grid of mostly nothing."""
    return {
        "regions": [
            {"box": [int(v) for v in box], "p": float(p)}
            for box, p in zip(tiles.boxes, fake_probs, strict=True)
        ],
        "size": list(tiles.size),
        "covered": tiles.covered,
    }
