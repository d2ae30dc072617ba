"""From an input's forward rows to its Prediction: the one place, for every surface (the
pipeline, the server), where scores become a verdict: one image, its tiles, a clip's frames, its
re-deliveries, the open-set test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.views import Tiles, View
from ..model.adapters import UNKNOWN
from .prediction import Prediction
from .tiles import summarize
from .videos import VideoInputs, summarize_video


def summarized(kind: Any, rows: np.ndarray, view: View) -> tuple[np.ndarray, dict[str, Any]]:
    """An input's class probabilities (C,) from its forward rows (n, C), and the Prediction
    fields they fill: a clip's frames (``video``, ``regions``), an image's tiles (``tiles``,
    ``regions``), else (the resize view) its one row."""
    if isinstance(kind, VideoInputs):
        p, video, regions = summarize_video(kind, rows, view)
        return p, {"video": video, "regions": regions}
    if isinstance(kind, Tiles):
        p, where = summarize(kind, rows, view)
        regions = where.pop("regions")
        return p, {"regions": regions, "tiles": {**where, "count": len(regions)}}
    return rows[0], {}


def predicted(
    source: str,
    p: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    fields: dict[str, Any] | None = None,
    open_set: dict[str, Any] | None = None,
) -> Prediction:
    """The Prediction of class probabilities ``p`` (C,): p(fake) = 1 - p(the real class, first),
    "fake" from ``threshold`` up, the most likely class ("unknown generator" when the open-set
    test says so; the label stays the pixels' real/fake), and ``fields`` (:func:`summarized`).
    In float64 on every surface (the model's rows are float32): ``fake_prob`` is exactly
    1 - ``probs`` of the real class."""
    p = np.asarray(p, dtype=np.float64)
    fake = float(1.0 - p[0])
    prediction = Prediction(
        source,
        fake,
        "fake" if fake >= threshold else "real",
        threshold,
        top_class=classes[int(np.argmax(p))],
        probs={c: float(v) for c, v in zip(classes, p, strict=True)},
    )
    for name, value in (fields or {}).items():
        setattr(prediction, name, value)
    if open_set is not None:
        prediction.open_set = open_set
        if open_set["unknown"]:
            prediction.top_class = UNKNOWN
    return prediction


def failed(source: str, threshold: float, error: str) -> Prediction:
    """The row of an input that could not be scored, with the reason."""
    return Prediction(source, None, None, threshold, error=error)


def stable(
    source: str,
    rows: np.ndarray,
    kinds: list[Tiles] | None,
    view: View,
    classes: Sequence[str],
    threshold: float,
    stability: Any,
) -> Prediction:
    """The Prediction of an image scored with its re-deliveries: ``rows`` are the forward rows
    of the image as given, then of each re-delivery, in order (one each with the resize view,
    ``kinds`` None; else each one's tiles, ``kinds`` their Tiles, aggregated by the view). The
    image as given makes the verdict; "uncertain" when the re-deliveries disagree or the score
    sits near the threshold (:meth:`Stability.verdict`)."""
    names = ["as given", *stability.variants]
    if kinds is None:
        per = [(row, {}) for row in rows]
    else:
        cuts = np.cumsum([len(t.pixels) for t in kinds])[:-1]
        per = [summarized(t, r, view) for t, r in zip(kinds, np.split(rows, cuts), strict=True)]
    prediction = predicted(source, per[0][0], classes, threshold, per[0][1])
    fakes = np.asarray([1.0 - np.float64(p[0]) for p, _ in per])  # as predicted's fake_prob
    report = stability.verdict(names, fakes, threshold)
    prediction.stability = report
    if report["uncertain"]:
        prediction.label = prediction.verdict = "uncertain"
    return prediction
