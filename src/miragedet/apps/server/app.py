"""The FastAPI application assembled: settings → shared state → routers → middleware and errors.

The model loads once, in the background at start-up (``/readyz`` says when it is ready;
state.py). Concurrent requests are grouped into batches (the detector's batch size, waiting at most
``max_wait_ms``); the number of images waiting is bounded (``max_queue``), and a request that
would exceed it gets 503 with Retry-After instead of queueing without limit (routes_score.py).
Every route, body, parameter and error is in the OpenAPI document (``/openapi.json``; Swagger UI
at ``/docs``, served from the fastapi-offline package, no CDN).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from ..._version import __version__
from ...inference.detector import Detector
from .auth import Unauthorized, unauthorized
from .contract import add_body_models
from .routes_info import info_router
from .routes_page import add_page
from .routes_score import score_router
from .settings import ServerSettings
from .state import ServerState, lifespan
from .uploads import BodyLimit, error

CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}


async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A request out of its schema: every problem in one 422."""
    parts = [
        f"{'.'.join(str(x) for x in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()
    ]
    return error("; ".join(parts) or "invalid request", 422, "invalid_request")


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's errors (404, 405, ...) in the service's error model."""
    code = CODES.get(exc.status_code, "invalid_request")
    return error(str(exc.detail), exc.status_code, code, headers=exc.headers)


def create_app(
    settings: ServerSettings,
    load_detector: Callable[[], Detector] | None = None,
    started: float | None = None,
) -> FastAPI:
    """The FastAPI application. ``load_detector`` overrides how the model is loaded (tests);
    ``started`` (``time.monotonic()``, default now) is when readiness is counted from."""
    state = ServerState.create(settings, load_detector, started)
    app = FastAPIOffline(
        title="miragedet",
        version=__version__,
        lifespan=lifespan,
        description="Detect AI-generated images and videos with MiraGe. POST them to "
        "/v1/detect as multipart files or base64 JSON (docs/api.md).",
        swagger_ui_parameters={"tryItOutEnabled": True},
    )
    app.state.server = state
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    body_mb = max(settings.max_body_mb, settings.max_video_mb)  # one video may exceed images'
    app.add_middleware(BodyLimit, limit=int(body_mb * 2**20))
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Unauthorized, unauthorized)
    app.include_router(info_router(state.keys))
    app.include_router(score_router(settings, state.keys))
    document_bodies(app, settings.max_images)
    add_page(app)
    return app


def document_bodies(app: FastAPI, max_images: int) -> None:
    """The OpenAPI document, made once, with the JSON body's models (contract.py)."""
    plain_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = add_body_models(plain_openapi(), max_images)
        return app.openapi_schema

    app.openapi = openapi


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
    return signal.signal(signal.SIGHUP, lambda *_: app.state.server.keys.reload())
