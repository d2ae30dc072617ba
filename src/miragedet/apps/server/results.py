"""From model outputs to the response: one ImageResult per upload (pixels, tiles, clip frames,
re-deliveries, open-set test), then the metadata's say in the verdict."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...data.views import View
from ...inference.detector import Detector
from ...inference.outcomes import predicted, stable, summarized
from ...inference.prediction import Prediction
from ...inference.stability import Stability
from .contract import ImageResult
from .uploads import Prepared


@dataclass
class Options:
    """What one request asked for (query parameters; None: the server's own)."""

    view: View
    stability: Stability | None = None
    threshold: float | None = None
    provenance: bool = True


def _prediction(
    detector: Detector,
    name: str,
    item: Prepared,
    scored: Any,
    temporal: Any,
    options: Options,
    threshold: float,
) -> Prediction:
    """The upload's Prediction from its rows (:mod:`miragedet.inference.outcomes`, as the
    pipeline makes them): the clip the temporal head scored, the re-deliveries, or the image's
    pixels, tiles or frames; the open-set test for a still image under the resize view."""
    view, classes = options.view, detector.classes
    if temporal is not None:
        p, video, regions = temporal
        return predicted(name, p, classes, threshold, {"video": video, "regions": regions})
    rows, outcome = scored
    if options.stability is not None:
        return stable(name, rows, item.extra, view, classes, threshold, options.stability)
    p, fields = summarized(item.extra, rows, view)
    return predicted(name, p, classes, threshold, fields, outcome if item.extra is None else None)


def result_of(name: str, prediction: Prediction, model_id: str) -> ImageResult:
    """A scored upload's response entry: the Prediction's fields under the contract's names."""
    shared = [f.name for f in dataclasses.fields(prediction) if f.name in ImageResult.model_fields]
    fields = {f: getattr(prediction, f) for f in shared}
    return ImageResult(name=name, status=200, model_id=model_id, **fields)


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
        if i not in scores and i not in temporal:
            result = ImageResult(name=name, status=item.status, code=item.code, error=item.error,
                                 threshold=threshold, model_id=detector.model_id)  # fmt: skip
        else:
            prediction = _prediction(detector, name, item, scores.get(i), temporal.get(i),
                                     options, threshold)  # fmt: skip
            read, anchors, watermarks = provenance
            if read:
                from ...provenance.verdict import read_provenance

                found = await asyncio.to_thread(read_provenance, data, anchors, watermarks)
                prediction.set_provenance(found)
            result = result_of(name, prediction, detector.model_id)
        result.clip = result.video  # the name before 0.2, for one release
        results.append(result)
    return results
