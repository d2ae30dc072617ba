"""Threshold calibration: the decision threshold that gives a target false-alarm rate on reals,
found on held-out real images and saved in the checkpoint."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from ..data.layouts import data_source


def calibrate_threshold(real_fake_prob: Sequence[float] | np.ndarray, target_fpr: float) -> float:
    """The lowest threshold at which at most ``target_fpr`` of these real images score >= it."""
    p = np.sort(np.asarray(real_fake_prob, dtype=np.float64))[::-1]  # descending
    if not len(p) or not 0 <= target_fpr < 1:
        raise ValueError("need real-image scores and a target false-positive rate in [0, 1)")
    allowed = int(np.floor(target_fpr * len(p)))  # how many reals may be called fake
    if allowed >= len(p):
        return float(p[-1])
    # Strictly above the (allowed+1)-th highest score, so that one is not flagged.
    return float(np.nextafter(p[allowed], np.inf))


def calibrate_checkpoint(
    model: Any,
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    fpr: float,
    layout: str = "auto",
    split: str | None = "val",
    view: Any = None,
    save: bool = True,
    workers: int | None = None,
) -> dict[str, Any]:
    """Score the real images of ``data`` with ``model`` (loaded from ``checkpoint``; on the
    device it is on) under the view it scores with, ``workers`` decode threads (None: as many
    as suit that device), and set the checkpoint's threshold to :func:`calibrate_threshold` for
    ``fpr`` (with ``save``; recorded beside it: target, achieved rate, data, view)."""
    from ..data.layouts import find_images
    from ..data.views import resolve
    from ..model.checkpoint import set_threshold
    from .scores import score_samples

    chosen = resolve(view, model.backbone.preprocess.view)
    reals = [s for s in find_images(data, layout, split=split).samples if s.label == 0]
    scores = score_samples(model, reals, view=chosen, workers=workers)
    p = scores.fake_prob[scores.ok]
    value = calibrate_threshold(p, fpr)
    achieved = float((p >= value).mean())
    info = {"target_fpr": fpr, "achieved_fpr": achieved, "n_real": len(p)}
    if save:
        about = {**info, "data": data_source(data), "view": asdict(chosen)}
        set_threshold(checkpoint, value, about)
    return {"threshold": value, **info}
