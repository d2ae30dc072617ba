"""The scoring route, ``POST /v1/detect``: uploads in, one result row per upload out.

A request's uploads are read and checked (count, the key's quota), prepared in threads,
clips with a temporal head scored with their embeddings, and every other model input goes
through the batcher together with those of concurrent requests; a request that would exceed
``max_queue`` gets 503 with Retry-After instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from ...data.video import Sampling
from ...data.views import AGGREGATES, View
from ...inference.detector import Detector
from ...inference.stability import VARIANTS_PATTERN, Stability
from ...inference.videos import VideoInputs
from .auth import guarded
from .batching import QueueFull
from .contract import DetectResponse, detect_request_body, error_responses
from .keys import KeyRing
from .results import Options, build
from .settings import ServerSettings
from .state import ServerState, State
from .uploads import Prepared, error, prepare, read_uploads, refused

access = logging.getLogger("miragedet.access")


def detect_query(max_tiles_limit: int) -> Callable[..., dict]:
    """The query parameters of ``/v1/detect`` (a dependency), as the dict of what was asked."""

    async def asked(
        view: Literal["resize", "tiles", "crop"] = Query(
            None,
            description="How an image becomes model inputs (docs/views.md); default: the server's",
        ),
        max_tiles: int = Query(
            None, ge=1, le=max_tiles_limit, description="Tiles per image at most"
        ),
        aggregate: Literal[AGGREGATES] = Query(
            None, description="How tiles' or frames' scores become the image's"
        ),
        stability: bool = Query(
            False,
            description="Also score re-deliveries (thumbnails, JPEG re-save, crop); "
            'label "uncertain" when they disagree or the score is near the threshold',
        ),
        stability_variants: str = Query(
            None,
            pattern=VARIANTS_PATTERN,
            description="Comma-separated, default downscale:512,downscale:256,jpeg:75,crop:0.8",
            examples=["jpeg:75,downscale:256"],
        ),
        stability_margin: float = Query(
            None, ge=0, lt=0.5, description="Within this of the threshold is uncertain (0.05)"
        ),
        threshold: float = Query(
            None, ge=0, le=1, description="p(fake) from which the label is fake (the model's)"
        ),
        provenance: bool = Query(
            True,
            description="Read C2PA, XMP, generator parameters and EXIF, and weigh them "
            "(when the server has provenance on)",
        ),
        frames: int = Query(None, ge=1, le=64, description="Frames scored per clip"),
        fps: float = Query(
            None, gt=0, le=256, description="Sample clips at this rate instead (frames/second)"
        ),
        max_seconds: float = Query(
            None, gt=0, le=86400, description="Only the first seconds of each clip"
        ),
    ) -> dict:
        return dict(
            view=view,
            max_tiles=max_tiles,
            aggregate=aggregate,
            stability=stability,
            stability_variants=stability_variants,
            stability_margin=stability_margin,
            threshold=threshold,
            provenance=provenance,
            frames=frames,
            fps=fps,
            max_seconds=max_seconds,
        )

    return asked


def score_router(settings: ServerSettings, keys: KeyRing) -> APIRouter:
    """The route, its documented statuses, body and limits as ``settings`` and the keys say."""
    statuses = [413, 415, 422, 503]
    if keys.enabled:
        statuses[:0] = [401]
        statuses.insert(-1, 429)

    async def detect(
        request: Request,
        state: State,
        asked: dict = Depends(detect_query(settings.max_tiles_limit)),
    ) -> JSONResponse:
        return await answer(request, state, asked)

    router = APIRouter()
    router.add_api_route(
        "/v1/detect",
        detect,
        methods=["POST"],
        operation_id="detect",
        summary="Score images and videos",
        response_model=DetectResponse,
        dependencies=guarded(keys),
        responses=error_responses(*statuses),
        openapi_extra={
            "requestBody": detect_request_body(
                settings.max_images, settings.max_body_mb, settings.max_video_mb
            )
        },
    )
    return router


async def answer(request: Request, state: ServerState, asked: dict) -> JSONResponse:
    """The response, counted in the metrics and written to the access log."""
    begin = time.perf_counter()
    response, images = await _detect(request, state, asked)
    metrics = state.metrics
    metrics.requests.labels(str(response.status_code)).inc()
    metrics.latency.observe(time.perf_counter() - begin)
    name = getattr(request.state, "key_name", "-")
    if state.keys.enabled:
        metrics.key_requests.labels(name).inc()
    client = request.client.host if request.client else "-"
    access.info(
        "%s POST /v1/detect %d key=%s images=%d", client, response.status_code, name, images
    )
    return response


async def _detect(request: Request, state: ServerState, asked: dict) -> tuple[JSONResponse, int]:
    """The response and the number of uploads it had."""
    settings, detector = state.settings, state.detector
    if detector is None:
        return state.unavailable("the model is still loading", "model_loading"), 0
    uploads = await read_uploads(request, settings.max_images)
    if isinstance(uploads, JSONResponse):
        return uploads, 0
    n = len(uploads)
    if not uploads:
        return error(
            'no image in the request: send multipart files or JSON {"images": [{"data": base64}]}',
            422,
            "no_image",
        ), 0
    if n > settings.max_images:
        return error(
            f"{n} images; at most {settings.max_images} per request", 413, "too_many_images"
        ), n
    refusal = _admit(request, state, n)
    if refusal is not None:
        return refusal, n
    options = _options(detector, settings, asked)
    if isinstance(options, JSONResponse):
        return options, n
    sampling = _sampling(detector, settings, asked)
    prepared = await asyncio.gather(
        *[
            asyncio.to_thread(
                prepare,
                data,
                detector,
                settings.max_pixels,
                options.stability,
                options.view,
                settings,
                sampling,
            )
            for _, data in uploads
        ]
    )
    temporal = await _score_videos(detector, prepared)
    scores = await _score(state, prepared, temporal)
    if scores is None:
        return state.unavailable("too many images waiting; retry later", "queue_full"), n
    read = settings.provenance and options.provenance
    results = await build(
        detector,
        uploads,
        prepared,
        scores,
        temporal,
        options,
        (read, settings.trust_anchors, settings.watermarks),
    )
    for result in results:
        state.metrics.images.labels("scored" if result.fake_prob is not None else "error").inc()
    body = DetectResponse(results=results).model_dump()
    if len(results) == 1 and results[0].status != 200:
        one = results[0]
        return error(one.error or "", one.status, one.code or "corrupt_image", **body), n
    return JSONResponse(body), n


def _admit(request: Request, state: ServerState, n: int) -> JSONResponse | None:
    """The 429 of a key over its rate or daily quota, else None (the images counted)."""
    name = getattr(request.state, "key_name", None)
    if name is None:
        return None
    refusal = state.keys.admit(name, n)
    if refusal is not None:
        state.metrics.key_refused.labels(name, refusal.reason).inc()
        return error(
            refusal.detail,
            429,
            refusal.reason,
            headers={"Retry-After": str(refusal.retry_after)},
        )
    state.metrics.key_images.labels(name).inc(n)
    return None


def _options(detector: Detector, settings: ServerSettings, asked: dict) -> Options | JSONResponse:
    default = detector.view
    view = default
    if any(asked[k] is not None for k in ("view", "max_tiles", "aggregate")):
        view = View(
            kind=asked["view"] or default.kind,
            max_tiles=asked["max_tiles"] or min(default.max_tiles, settings.max_tiles_limit),
            overlap=default.overlap,
            aggregate=asked["aggregate"] or default.aggregate,
        )
    stability = None
    if asked["stability"]:
        try:
            stability = Stability.parse(asked["stability_variants"], asked["stability_margin"])
        except ValueError as exc:
            return error(f"stability options: {exc}", 422, "invalid_request")
    return Options(view, stability, asked["threshold"], asked["provenance"])


def _sampling(detector: Detector, settings: ServerSettings, asked: dict) -> Sampling:
    """How clips are sampled: the detector's, with what the request or the server asks."""
    sampling = detector.video_sampling
    clip_asked = {k: asked[k] for k in ("frames", "fps", "max_seconds") if asked[k]}
    if settings.frames is not None and "frames" not in clip_asked:
        clip_asked["frames"] = min(settings.frames, 64)
    if clip_asked:
        sampling = dataclasses.replace(sampling, **clip_asked)
    return sampling


async def _score_videos(detector: Detector, prepared: list[Prepared]) -> dict:
    """Clips through the temporal head, scored with their embeddings: {upload index: score}."""
    temporal = {
        i: p.extra
        for i, p in enumerate(prepared)
        if isinstance(p.extra, VideoInputs) and detector.has_temporal
    }
    if temporal:
        scored = await asyncio.to_thread(detector.score_videos, list(temporal.values()))
        temporal = dict(zip(temporal, scored, strict=True))
    return temporal


async def _score(state: ServerState, prepared: list[Prepared], temporal: dict) -> dict | None:
    """Every other upload's inputs through the batcher: {upload index: (rows, found)}; None
    when the queue is full. An upload that no decoder could read becomes a 422 in
    ``prepared``."""
    good = [i for i, p in enumerate(prepared) if p.tensors is not None and i not in temporal]
    flat = [t for i in good for t in prepared[i].tensors]
    try:
        flat_results = await state.batcher.submit(flat)
    except QueueFull:
        return None
    scores, cursor = {}, 0
    for i in good:
        k = len(prepared[i].tensors)
        part, cursor = flat_results[cursor : cursor + k], cursor + k
        failed = [found["error"] for row, found in part if row is None]
        if failed:  # a JPEG neither the GPU decoder nor Pillow could decode
            prepared[i] = refused(422, "corrupt_image", failed[0])
            continue
        scores[i] = (np.stack([row for row, _ in part]), part[0][1] if k == 1 else None)
    return scores
