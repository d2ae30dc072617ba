"""From model outputs to the response: one ImageResult per upload (pixels, tiles, clip frames,
re-deliveries, open-set test), then the metadata's say in the verdict."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...data.views import Tiles, View
from ...inference.detector import Detector
from ...inference.stability import Stability
from ...inference.tiles import summarize
from ...inference.videos import VideoInputs, summarize_video
from ...model.adapters import UNKNOWN
from .contract import ImageResult
from .uploads import Prepared


@dataclass
class Options:
    """What one request asked for (query parameters; None: the server's own)."""

    view: View
    stability: Stability | None = None
    threshold: float | None = None
    provenance: bool = True


def _probability(prepared: Prepared, scores: np.ndarray, view: View, result: ImageResult):
    """The upload's class probabilities, filling its regions/tiles/clip on the way."""
    extra = prepared.extra
    if isinstance(extra, VideoInputs):
        p, result.video, result.regions = summarize_video(extra, scores, view)
        return p
    if isinstance(extra, list):  # re-deliveries under the tiles/crop view: one Tiles each
        extra = extra[0]
        scores = scores[: len(extra.pixels)]
    if isinstance(extra, Tiles):
        p, where = summarize(extra, scores, view)
        result.regions = where.pop("regions")
        result.tiles = {**where, "count": len(result.regions)}
        return p
    return scores[0]


def _redelivered(prepared: Prepared, scores: np.ndarray, view: View) -> np.ndarray:
    """p(fake) of the image as given and of each re-delivery, each scored by the view."""
    if not isinstance(prepared.extra, list):
        return 1.0 - scores[:, 0]
    out, cursor = [], 0
    for tiles in prepared.extra:
        k = len(tiles.pixels)
        p, _ = summarize(tiles, scores[cursor : cursor + k], view)
        out.append(1.0 - p[0])
        cursor += k
    return np.asarray(out)


async def build(
    detector: Detector,
    uploads: list[tuple[str, bytes]],
    prepared: list[Prepared],
    scores: dict[int, tuple[np.ndarray, Any]],
    temporal: dict[int, tuple],
    options: Options,
    provenance: tuple[bool, Any, bool],
) -> list[ImageResult]:
    """The result of each upload. ``scores``: per scored upload its rows and open-set outcome;
    ``temporal``: clips the temporal head scored; ``provenance``: (read it, trust anchors,
    watermarks)."""
    threshold = detector.threshold if options.threshold is None else options.threshold
    results = []
    for i, (name, data) in enumerate(uploads):
        item = prepared[i]
        result = ImageResult(
            name=name,
            status=item.status,
            code=item.code,
            error=item.error,
            threshold=threshold,
            model_id=detector.model_id,
        )
        if i in scores or i in temporal:
            if i in temporal:
                p, result.video, result.regions = temporal[i]
            else:
                p = _probability(item, scores[i][0], options.view, result)
            fake = float(1.0 - p[0])
            result.fake_prob = fake
            result.label = "fake" if fake >= threshold else "real"
            result.top_class = detector.classes[int(np.argmax(p))]
            outcome = scores[i][1] if i in scores else None
            if outcome is not None and item.extra is None and options.stability is None:
                result.open_set = outcome  # still images, resize view
                if outcome["unknown"]:
                    result.top_class = UNKNOWN
            result.probs = {c: float(v) for c, v in zip(detector.classes, p, strict=True)}
            if options.stability is not None:
                names = ["as given", *options.stability.variants]
                fakes = _redelivered(item, scores[i][0], options.view)
                report = options.stability.verdict(names, fakes, threshold)
                result.stability = report
                if report["uncertain"]:
                    result.label = "uncertain"
            result.verdict, result.basis = result.label, "pixels"
            read, anchors, watermarks = provenance
            if read:
                from ...provenance.verdict import combine, read_provenance

                result.provenance = await asyncio.to_thread(
                    read_provenance, data, anchors, watermarks
                )
                result.verdict, result.basis = combine(result.label, result.provenance)
        result.clip = result.video  # the name before 0.2, for one release
        results.append(result)
    return results
