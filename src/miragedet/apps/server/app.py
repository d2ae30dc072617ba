"""The FastAPI application: routes, keys and quotas, readiness, and the access log.

The model loads once, in the background at start-up (``/readyz`` says when it is ready).
Concurrent requests are grouped into batches (``max_batch`` images, waiting at most
``max_wait_ms``); the number of images waiting is bounded (``max_queue``), and a request that
would exceed it gets 503 with Retry-After instead of queueing without limit. Every route, body,
parameter and error is in the OpenAPI document (``/openapi.json``; Swagger UI at ``/docs``,
served from the fastapi-offline package, no CDN).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from ..._version import __version__
from ...data.views import AGGREGATES, View
from ...inference.clips import ClipInputs
from ...inference.compiled import compile_ahead
from ...inference.detector import Detector
from ...inference.loader import load_detector as load_detector_for
from ...inference.stability import VARIANTS_PATTERN, Stability
from .batching import Batcher, Metrics, QueueFull
from .contract import (
    DetectResponse,
    Health,
    Readiness,
    add_body_models,
    detect_request_body,
    error_responses,
)
from .keys import KeyRing
from .results import Options, build
from .settings import ServerSettings
from .uploads import BodyLimit, error, prepare, read_uploads, refused

STATIC = Path(__file__).resolve().parent.parent / "static"
CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}
access = logging.getLogger("miragedet.access")


class Unauthorized(Exception):
    pass


def create_app(
    settings: ServerSettings,
    load_detector: Callable[[], Detector] | None = None,
    started: float | None = None,
) -> FastAPI:
    """The FastAPI application. ``load_detector`` overrides how the model is loaded (tests);
    ``started`` (``time.monotonic()``, default now) is when readiness is counted from."""
    metrics = Metrics()
    started = time.monotonic() if started is None else started
    keys = KeyRing(
        Path(settings.api_keys_file) if settings.api_keys_file else None,
        settings.api_key,
        settings.rate_limit,
        settings.daily_images,
    )

    def default_loader() -> Detector:
        return load_detector_for(
            settings.model,
            settings.backend,
            # a first-time ONNX export and measurement (--backend auto) says so in the log
            notify=lambda message: logging.getLogger("uvicorn.error").info(
                "miragedet: %s", message
            ),
            threshold=settings.threshold,
            device=settings.device,
            precision=settings.precision,
            view=settings.view,
            batch_size=settings.max_batch,  # the batches it will run: what auto measures at
            images=math.inf,  # long-lived: torch.compile competes
        )

    loader = load_detector or default_loader

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.detector = None
        app.state.batcher = None
        app.state.load_error = None

        async def load() -> None:
            try:
                detector = await asyncio.to_thread(loader)
                await asyncio.to_thread(compile_ahead, detector)  # torch.compile: before ready
            except Exception as exc:
                app.state.load_error = f"{type(exc).__name__}: {exc}"
                return
            app.state.batcher = Batcher(detector, settings, metrics)
            app.state.batcher.start()
            app.state.detector = detector
            metrics.ready.set(1)
            elapsed = time.monotonic() - started
            metrics.ready_seconds.set(elapsed)
            engine = detector.engine_info()
            logging.getLogger("uvicorn.error").info(
                "miragedet: ready in %.2f s; engine %s (%s)", elapsed, engine["backend"],
                engine["reason"],
            )  # fmt: skip

        loading = asyncio.create_task(load())
        try:
            yield
        finally:
            loading.cancel()
            if app.state.batcher is not None:
                await app.state.batcher.stop()

    app = FastAPIOffline(
        title="miragedet",
        version=__version__,
        lifespan=lifespan,
        description="Detect AI-generated images and videos with MiraGe. POST them to "
        "/v1/detect as multipart files or base64 JSON (docs/api.md).",
        swagger_ui_parameters={"tryItOutEnabled": True},
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    body_mb = max(settings.max_body_mb, settings.max_video_mb)  # one video may exceed images'
    app.add_middleware(BodyLimit, limit=int(body_mb * 2**20))
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.keys = keys

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(x) for x in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
            for e in exc.errors()
        ]
        return error("; ".join(parts) or "invalid request", 422, "invalid_request")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = CODES.get(exc.status_code, "invalid_request")
        return error(str(exc.detail), exc.status_code, code, headers=exc.headers)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        detail = "missing API key, or not one of this server's (X-API-Key or Bearer)"
        return error(detail, 401, "unauthorized", headers={"WWW-Authenticate": "Bearer"})

    header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key")
    bearer = HTTPBearer(auto_error=False, description="The same key as a Bearer token")

    async def key_name(
        request: Request,
        given: str | None = Security(header_key),
        token: HTTPAuthorizationCredentials | None = Security(bearer),
    ) -> str:
        name = keys.check(given if given is not None else (token.credentials if token else None))
        if name is None:
            raise Unauthorized
        request.state.key_name = name
        return name

    guarded = [Depends(key_name)] if keys.enabled else []

    def unavailable(detail: str, code: str) -> JSONResponse:
        return error(detail, 503, code, headers={"Retry-After": str(settings.retry_after_s)})

    @app.get(
        "/healthz",
        operation_id="healthz",
        response_model=Health,
        summary="Liveness: the process answers",
    )
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        operation_id="readyz",
        response_model=Readiness,
        summary="Readiness: the model is loaded",
        responses={503: {"model": Readiness, "description": "loading, or failed to load"}},
    )
    async def readyz(request: Request) -> JSONResponse:
        state = request.app.state
        if state.detector is None:
            return JSONResponse({"ready": False, "error": state.load_error}, 503)
        return JSONResponse({"ready": True})

    @app.get(
        "/metrics",
        operation_id="metrics",
        response_class=PlainTextResponse,
        summary="Prometheus metrics",
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
    )
    async def metrics_endpoint() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/v1/model",
        operation_id="model_info",
        summary="What is served: model, classes, threshold, preprocessing, engine, limits",
        response_model=dict[str, Any],
        dependencies=guarded,
        responses=error_responses(*([401] if keys.enabled else []), 503),
    )
    async def model_info(request: Request) -> JSONResponse:
        detector = request.app.state.detector
        if detector is None:
            return unavailable("the model is still loading", "model_loading")
        return JSONResponse(
            {
                **detector.info(),
                "miragedet_version": __version__,
                "limits": {
                    "max_body_mb": settings.max_body_mb,
                    "max_pixels": settings.max_pixels,
                    "max_images": settings.max_images,
                    "max_tiles": settings.max_tiles_limit,
                    "max_video_mb": settings.max_video_mb,
                    "max_video_seconds": settings.max_video_seconds,
                },
            }
        )

    statuses = [413, 415, 422, 503]
    if keys.enabled:
        statuses[:0] = [401]
        statuses.insert(-1, 429)

    @app.post(
        "/v1/detect",
        operation_id="detect",
        summary="Score images and videos",
        response_model=DetectResponse,
        dependencies=guarded,
        responses=error_responses(*statuses),
        openapi_extra={
            "requestBody": detect_request_body(
                settings.max_images, settings.max_body_mb, settings.max_video_mb
            )
        },
    )
    async def detect(
        request: Request,
        view: Literal["resize", "tiles", "crop"] = Query(
            None,
            description="How an image becomes model inputs (docs/views.md); default: the server's",
        ),
        max_tiles: int = Query(
            None, ge=1, le=settings.max_tiles_limit, description="Tiles per image at most"
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
    ) -> JSONResponse:
        begin = time.perf_counter()
        asked = dict(
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
        response, images = await _detect(request, asked)
        metrics.requests.labels(str(response.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - begin)
        name = getattr(request.state, "key_name", "-")
        if keys.enabled:
            metrics.key_requests.labels(name).inc()
        client = request.client.host if request.client else "-"
        access.info(
            "%s POST /v1/detect %d key=%s images=%d", client, response.status_code, name, images
        )
        return response

    async def _detect(request: Request, asked: dict) -> tuple[JSONResponse, int]:
        detector: Detector | None = request.app.state.detector
        if detector is None:
            return unavailable("the model is still loading", "model_loading"), 0
        uploads = await read_uploads(request, settings.max_images)
        if isinstance(uploads, JSONResponse):
            return uploads, 0
        n = len(uploads)
        if not uploads:
            return error(
                'no image in the request: send multipart files or JSON {"images": '
                '[{"data": base64}]}',
                422,
                "no_image",
            ), 0
        if n > settings.max_images:
            return error(
                f"{n} images; at most {settings.max_images} per request", 413, "too_many_images"
            ), n
        name = getattr(request.state, "key_name", None)
        if name is not None:
            refusal = keys.admit(name, n)
            if refusal is not None:
                metrics.key_refused.labels(name, refusal.reason).inc()
                return error(
                    refusal.detail,
                    429,
                    refusal.reason,
                    headers={"Retry-After": str(refusal.retry_after)},
                ), n
            metrics.key_images.labels(name).inc(n)
        options = _options(detector, asked)
        if isinstance(options, JSONResponse):
            return options, n
        sampling = detector.clip_sampling
        clip_asked = {k: asked[k] for k in ("frames", "fps", "max_seconds") if asked[k]}
        if settings.frames is not None and "frames" not in clip_asked:
            clip_asked["frames"] = min(settings.frames, 64)
        if clip_asked:
            sampling = dataclasses.replace(sampling, **clip_asked)
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
        temporal = {  # clips through the temporal head: scored with their embeddings
            i: p.extra
            for i, p in enumerate(prepared)
            if isinstance(p.extra, ClipInputs) and detector.has_temporal
        }
        if temporal:
            scored = await asyncio.to_thread(detector.score_clips, list(temporal.values()))
            temporal = dict(zip(temporal, scored, strict=True))
        good = [i for i, p in enumerate(prepared) if p.tensors is not None and i not in temporal]
        flat = [t for i in good for t in prepared[i].tensors]
        try:
            flat_results = await request.app.state.batcher.submit(flat)
        except QueueFull:
            return unavailable("too many images waiting; retry later", "queue_full"), n
        scores, cursor = {}, 0
        for i in good:
            k = len(prepared[i].tensors)
            part, cursor = flat_results[cursor : cursor + k], cursor + k
            failed = [found["error"] for row, found in part if row is None]
            if failed:  # a JPEG neither the GPU decoder nor Pillow could decode
                prepared[i] = refused(422, "corrupt_image", failed[0])
                continue
            scores[i] = (np.stack([row for row, _ in part]), part[0][1] if k == 1 else None)
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
            metrics.images.labels("scored" if result.fake_prob is not None else "error").inc()
        body = DetectResponse(results=results).model_dump()
        if len(results) == 1 and results[0].status != 200:
            one = results[0]
            return error(one.error or "", one.status, one.code or "corrupt_image", **body), n
        return JSONResponse(body), n

    def _options(detector: Detector, asked: dict) -> Options | JSONResponse:
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

    plain_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = add_body_models(plain_openapi(), settings.max_images)
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def serve(
    settings: ServerSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    started: float | None = None,
) -> None:
    """Run the app under uvicorn; SIGHUP reloads the API keys file (requests keep going)."""
    import uvicorn

    app = create_app(settings, started=started)
    reload_on_hangup(app)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def reload_on_hangup(app: FastAPI) -> Any:
    """SIGHUP re-reads the app's API keys file (the keys swap at once; requests in flight go
    on). Returns the handler it replaced (None where the platform has no SIGHUP)."""
    import signal

    if not hasattr(signal, "SIGHUP"):
        return None
    return signal.signal(signal.SIGHUP, lambda *_: app.state.keys.reload())
