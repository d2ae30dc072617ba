"""`miragedet serve`: an HTTP service (FastAPI + uvicorn) and a web page over a Detector.

The model loads once, in the background at start-up (``/readyz`` says when it is ready).
Concurrent requests are grouped into batches (``max_batch`` images, waiting at most
``max_wait_ms``); the number of images waiting is bounded (``max_queue``), and a request that
would exceed it gets 503 with Retry-After instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import io
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from .._version import __version__
from ..data import formats
from ..data.dataset import ImageDecodeError, load_image
from ..data.video import clip_kind
from ..data.views import Tiles, View, inputs, summarize
from ..inference.clips import ClipInputs, prepare_clip, summarize_clip
from ..inference.detector import Detector
from ..inference.loader import load_detector as load_detector_for
from ..inference.stability import Stability
from ..model.adapters import UNKNOWN
from .batching import Batcher, Metrics, QueueFull

STATIC = Path(__file__).parent / "static"
ALLOWED_FORMATS = formats.ACCEPTED  # one table with the decoder and the web page
STATUS_OF_KIND = {"format": 415, "size": 413, "corrupt": 422, "missing": 422}


@dataclass
class ServerSettings:
    model: str = ""
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256  # images waiting or being scored
    max_body_mb: float = 32.0
    max_pixels: int = 40_000_000
    max_images: int = 64  # per request
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    threshold: float | None = None
    device: str | None = None
    provenance: bool = True
    trust_anchors: str | None = None  # PEM text of trusted C2PA signers (--trust-anchors)
    watermarks: bool = False  # look for generators' invisible watermarks (--watermarks)
    retry_after_s: int = 1
    backend: str = "torch"  # torch | onnx (the checkpoint's model.onnx, ONNX Runtime)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (network cast once; torch backend)
    #: A View, a kind, or options with an optional kind (views.resolve); None: the checkpoint's
    #: (tiles for one trained on native crops).
    view: Any = None
    max_tiles_limit: int = 64  # the most tiles a request may ask for per image (?max_tiles=)
    max_video_mb: float = 64.0  # one video upload at most (images: max_body_mb)
    max_video_seconds: float = 600.0  # longer clips are refused (413)
    #: Frames scored per clip (None: the detector's, 16 by default); at most 64 per clip.
    frames: int | None = None


class ImageResult(BaseModel):
    name: str
    status: int = Field(description="200 if scored, else the HTTP status of this image's error")
    fake_prob: float | None = Field(None, description="p(AI-generated), 0..1")
    label: str | None = Field(None, description='"fake" or "real" at the threshold')
    threshold: float
    top_class: str | None = None
    probs: dict[str, float] = {}
    model_id: str
    provenance: dict[str, Any] | None = None
    verdict: str | None = Field(
        None,
        description='The label weighed with the metadata: "fake" when it declares generative AI',
    )
    basis: str | None = Field(
        None, description='"pixels", or "declared (c2pa|watermark|xmp|parameters|exif)"'
    )
    stability: dict[str, Any] | None = Field(
        None,
        description="With ?stability=true: scores of the re-deliveries and the reason "
        'for an "uncertain" label',
    )
    tiles: dict[str, Any] | None = Field(
        None,
        description="With the tiles or crop view: how the image was tiled (view, rule, its "
        "size as tiled, whether every pixel was covered, number of tiles)",
    )
    regions: list[dict[str, Any]] | None = Field(
        None,
        description='Where and when the evidence is: per tile {"box": [left, top, right, '
        'bottom], "p": p(fake)}; per scored frame of a clip {"t": seconds, "p": p(fake)} '
        "(docs/video.md)",
    )
    clip: dict[str, Any] | None = Field(
        None,
        description="Videos and animated images: frames scored, duration, size, decoder, the "
        "frames' aggregate and (temporal head) the temporal p(fake)",
    )
    open_set: dict[str, Any] | None = Field(
        None,
        description="Adapted attribution models: the distance to the nearest known class, the "
        'threshold, and whether the image is an unknown generator (then top_class is "unknown '
        'generator")',
    )
    error: str | None = None


class DetectResponse(BaseModel):
    results: list[ImageResult]


class Base64Image(BaseModel):
    data: str = Field(description="The image file's bytes, base64-encoded")
    name: str | None = None


class DetectJSON(BaseModel):
    images: list[Base64Image]


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, also when chunked."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Callable) -> None:
        mb = self.limit / 2**20
        response = JSONResponse({"detail": f"request body over the {mb:g} MB limit"}, 413)
        await response({"type": "http"}, None, send)


def _prepare_clip(
    data: bytes, detector: Detector, view: View, limits: ServerSettings | None
) -> tuple[list[torch.Tensor] | None, int, str | None, Any]:
    """A video or animated image: its frames' inputs, or the status of why not."""
    limits = limits or ServerSettings()
    if len(data) > limits.max_video_mb * 2**20:
        return None, 413, f"video over the {limits.max_video_mb:g} MB limit", None
    sampling = detector.clip_sampling
    if limits.frames is not None:
        sampling = dataclasses.replace(sampling, frames=min(limits.frames, 64))
    sampling = dataclasses.replace(sampling, max_pixels=min(sampling.max_pixels, limits.max_pixels))
    prepared = prepare_clip(data, detector.preprocess, view, sampling)
    duration = prepared.clip.duration or 0.0
    if duration > limits.max_video_seconds:
        return None, 413, (f"clip of {duration:.0f} s is over this server's limit of "
                           f"{limits.max_video_seconds:g} s"), None  # fmt: skip
    return list(prepared.pixels), 200, None, prepared


def _prepare(
    data: bytes,
    detector: Detector,
    max_pixels: int,
    stability: Stability | None = None,
    view: View | None = None,
    limits: ServerSettings | None = None,
) -> tuple[list[torch.Tensor] | None, int, str | None, Any]:
    """Decode and preprocess one upload: ([tensor, ...], 200, None, tiles) or (None, status,
    error, None).

    The list holds the image's one input (resize view), its tiles (tiles/crop view: ``tiles``
    are their :class:`~miragedet.data.views.Tiles`), or, with ``stability``, the image as given and
    then each re-delivery."""
    view = view or detector.view
    try:
        fmt = formats.sniff(formats.read_head(data))
        if fmt == "VIDEO" or (fmt in ("GIF", "WEBP", "PNG") and clip_kind(data)):
            return _prepare_clip(data, detector, view, limits)
        if limits is not None and len(data) > limits.max_body_mb * 2**20:
            return None, 413, f"upload over the {limits.max_body_mb:g} MB limit for images", None
        if fmt is None:  # no signature we know: ask Pillow what it is (TGA, PPM, ...)
            with Image.open(io.BytesIO(data)) as probe:
                fmt = probe.format
        if fmt not in ALLOWED_FORMATS:
            return (
                None,
                415,
                f"unsupported image format {fmt}; send one of "
                + ", ".join(f.title for f in formats.FORMATS),
                None,
            )
        # re-deliveries (stability) and tiles start from the exact decode; the resize view may
        # draft JPEGs
        draft = None if stability or view.kind != "resize" else detector.draft_size
        image = load_image(data, max_pixels=max_pixels, draft_size=draft)
        if view.kind != "resize":
            tiles = inputs(image, detector.preprocess, view)
            return list(tiles.pixels), 200, None, tiles
        images = [im for _, im in stability.redeliver(image)] if stability else [image]
        return [detector.preprocess(im) for im in images], 200, None, None
    except ImageDecodeError as exc:
        return None, STATUS_OF_KIND.get(exc.kind, 422), str(exc), None
    except Image.DecompressionBombError as exc:
        return None, 413, f"decompression bomb refused: {exc}", None
    except Image.UnidentifiedImageError:
        return None, 415, "not a recognised image format", None
    except Exception as exc:
        return None, 422, f"could not read the image: {type(exc).__name__}: {exc}", None


def _float(text: str | None) -> float | None:
    return float(text) if text else None


def _request_view(request: Request, default: View, max_tiles_limit: int) -> View | str:
    """The view a request asks for (?view=tiles&max_tiles=16&aggregate=max; the server's by
    default), or the reason it cannot have it."""
    query = request.query_params
    if not any(k in query for k in ("view", "max_tiles", "aggregate")):
        return default
    try:
        asked = query.get("max_tiles")
        max_tiles = int(asked) if asked else min(default.max_tiles, max_tiles_limit)
        if max_tiles > max_tiles_limit:
            return f"max_tiles {max_tiles} is over this server's limit of {max_tiles_limit}"
        return View(
            kind=query.get("view") or default.kind,
            max_tiles=max_tiles,
            overlap=default.overlap,
            aggregate=query.get("aggregate") or default.aggregate,
        )
    except ValueError as exc:
        return f"view options: {exc}"


def create_app(
    settings: ServerSettings,
    load_detector: Callable[[], Detector] | None = None,
    started: float | None = None,
) -> FastAPI:
    """The FastAPI application. ``load_detector`` overrides how the model is loaded (tests);
    ``started`` (``time.monotonic()``, default now) is when readiness is counted from."""
    metrics = Metrics()
    started = time.monotonic() if started is None else started

    def default_loader() -> Detector:
        return load_detector_for(
            settings.model,
            settings.backend,
            threshold=settings.threshold,
            device=settings.device,
            precision=settings.precision,
            view=settings.view,
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
            except Exception as exc:
                app.state.load_error = f"{type(exc).__name__}: {exc}"
                return
            app.state.batcher = Batcher(detector, settings, metrics)
            app.state.batcher.start()
            app.state.detector = detector
            metrics.ready.set(1)
            elapsed = time.monotonic() - started
            metrics.ready_seconds.set(elapsed)
            logging.getLogger("uvicorn.error").info("miragedet: ready in %.2f s", elapsed)

        loading = asyncio.create_task(load())
        try:
            yield
        finally:
            loading.cancel()
            if app.state.batcher is not None:
                await app.state.batcher.stop()

    app = FastAPI(
        title="miragedet",
        version=__version__,
        lifespan=lifespan,
        description="Detect AI-generated images with MiraGe. POST images to "
        "/v1/detect as multipart files or base64 JSON.",
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

    def check_key(request: Request) -> JSONResponse | None:
        if not settings.api_key:
            return None
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:]
        if given != settings.api_key:
            return JSONResponse(
                {"detail": "missing or wrong API key (X-API-Key header)"},
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    def unavailable(detail: str) -> JSONResponse:
        return JSONResponse(
            {"detail": detail}, 503, headers={"Retry-After": str(settings.retry_after_s)}
        )

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        state = request.app.state
        if state.detector is None:
            body = {"ready": False, "error": state.load_error}
            return JSONResponse(body, 503)
        return JSONResponse({"ready": True})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model")
    async def model_info(request: Request) -> JSONResponse:
        refused = check_key(request)
        if refused:
            return refused
        detector = request.app.state.detector
        if detector is None:
            return unavailable("the model is still loading")
        return JSONResponse(
            {
                **detector.info(),
                "miragedet_version": __version__,
                "limits": {
                    "max_body_mb": settings.max_body_mb,
                    "max_pixels": settings.max_pixels,
                    "max_images": settings.max_images,
                },
            }
        )

    @app.post(
        "/v1/detect",
        response_model=DetectResponse,
        responses={
            401: {"description": "API key missing or wrong"},
            413: {"description": "body or image too large"},
            415: {"description": "not a supported image format"},
            422: {"description": "corrupt image, or no image in the request"},
            503: {"description": "model loading or queue full; see Retry-After"},
        },
    )
    async def detect(request: Request) -> JSONResponse:
        start = time.perf_counter()
        response = await _detect(request)
        metrics.requests.labels(str(response.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - start)
        return response

    async def _detect(request: Request) -> JSONResponse:
        refused = check_key(request)
        if refused:
            return refused
        detector: Detector | None = request.app.state.detector
        if detector is None:
            return unavailable("the model is still loading")
        uploads = await _read_uploads(request)
        if isinstance(uploads, JSONResponse):
            return uploads
        if not uploads:
            return JSONResponse(
                {
                    "detail": "no image in the request: send multipart files "
                    'or JSON {"images": [{"data": base64}]}'
                },
                422,
            )
        if len(uploads) > settings.max_images:
            return JSONResponse(
                {"detail": f"{len(uploads)} images; at most {settings.max_images} per request"}, 413
            )
        stability = None
        if request.query_params.get("stability", "").lower() in ("1", "true", "yes"):
            try:
                stability = Stability.parse(
                    request.query_params.get("stability_variants"),
                    _float(request.query_params.get("stability_margin")),
                )
            except ValueError as exc:
                return JSONResponse({"detail": f"stability options: {exc}"}, 422)
        view = _request_view(request, detector.view, settings.max_tiles_limit)
        if isinstance(view, str):
            return JSONResponse({"detail": view}, 422)
        if stability is not None and view.kind != "resize":
            return JSONResponse({"detail": "stability works with the resize view only"}, 422)

        prepared = await asyncio.gather(
            *[
                asyncio.to_thread(
                    _prepare, data, detector, settings.max_pixels, stability, view, settings
                )
                for _, data in uploads
            ]
        )
        if stability is not None and any(isinstance(p[3], ClipInputs) for p in prepared):
            return JSONResponse({"detail": "stability works with still images only"}, 422)
        temporal = {  # clips through the temporal head: scored with their embeddings
            i: p[3]
            for i, p in enumerate(prepared)
            if isinstance(p[3], ClipInputs) and detector.has_temporal
        }
        if temporal:
            scored = await asyncio.to_thread(detector.score_clips, list(temporal.values()))
            temporal = dict(zip(temporal, scored, strict=True))
        good = [i for i, (tensors, *_) in enumerate(prepared)
                if tensors is not None and i not in temporal]  # fmt: skip
        flat = [t for i in good for t in prepared[i][0]]
        try:
            flat_results = await request.app.state.batcher.submit(flat)
        except QueueFull:
            return unavailable("too many images waiting; retry later")
        by_index, open_sets, cursor = {}, {}, 0
        for i in good:
            k = len(prepared[i][0])
            by_index[i] = np.stack([row for row, _ in flat_results[cursor : cursor + k]])
            open_sets[i] = flat_results[cursor][1] if k == 1 else None
            cursor += k
        results = []
        for i, (name, data) in enumerate(uploads):
            _, status, error, tiles = prepared[i]
            result = ImageResult(
                name=name,
                status=status,
                threshold=detector.threshold,
                model_id=detector.model_id,
                error=error,
            )
            if i in by_index or i in temporal:
                if i in temporal:
                    p, result.clip, result.regions = temporal[i]
                elif isinstance(tiles, ClipInputs):
                    p, result.clip, result.regions = summarize_clip(tiles, by_index[i], view)
                else:
                    p = by_index[i][0]
                if isinstance(tiles, Tiles):
                    p, where = summarize(tiles, by_index[i], view)
                    result.regions = where.pop("regions")
                    result.tiles = {**where, "count": len(result.regions)}
                fake = float(1.0 - p[0])
                result.fake_prob = fake
                result.label = "fake" if fake >= detector.threshold else "real"
                result.top_class = detector.classes[int(np.argmax(p))]
                if open_sets.get(i) is not None and tiles is None:  # still images only
                    result.open_set = open_sets[i]
                    if result.open_set["unknown"]:
                        result.top_class = UNKNOWN
                result.probs = {c: float(v) for c, v in zip(detector.classes, p, strict=True)}
                if stability is not None:
                    names = ["as given", *stability.variants]
                    report = stability.verdict(names, 1.0 - by_index[i][:, 0], detector.threshold)
                    result.stability = report
                    if report["uncertain"]:
                        result.label = "uncertain"
                result.verdict, result.basis = result.label, "pixels"
                if settings.provenance:
                    from ..provenance.verdict import combine, read_provenance

                    result.provenance = await asyncio.to_thread(
                        read_provenance, data, settings.trust_anchors, settings.watermarks
                    )
                    result.verdict, result.basis = combine(result.label, result.provenance)
            metrics.images.labels("scored" if result.fake_prob is not None else "error").inc()
            results.append(result)
        body = DetectResponse(results=results).model_dump()
        if len(results) == 1 and results[0].status != 200:
            return JSONResponse({"detail": results[0].error, **body}, results[0].status)
        return JSONResponse(body)

    async def _read_uploads(request: Request) -> list[tuple[str, bytes]] | JSONResponse:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=settings.max_images + 1)
            uploads = []
            for key, value in form.multi_items():
                if hasattr(value, "read"):
                    uploads.append((value.filename or key, await value.read()))
            return uploads
        if content_type.startswith("application/json"):
            try:
                payload = DetectJSON.model_validate_json(await request.body())
                return [
                    (img.name or f"image-{i}", base64.b64decode(img.data, validate=True))
                    for i, img in enumerate(payload.images)
                ]
            except (ValueError, binascii.Error) as exc:
                return JSONResponse({"detail": f"invalid JSON body: {exc}"}, 422)
        return JSONResponse(
            {
                "detail": "send multipart/form-data files or application/json "
                f"base64 images, not {content_type or 'no content type'}"
            },
            415,
        )

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
    import uvicorn

    app = create_app(settings, started=started)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
