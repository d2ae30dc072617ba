"""The routes that describe the server: liveness, readiness, metrics and the served model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..._version import __version__
from .auth import guarded
from .contract import Health, Readiness, error_responses
from .keys import KeyRing
from .state import State


async def healthz() -> dict:
    return {"status": "ok"}


async def readyz(state: State) -> JSONResponse:
    if state.detector is None:
        return JSONResponse({"ready": False, "error": state.load_error}, 503)
    return JSONResponse({"ready": True})


async def metrics_endpoint(state: State) -> PlainTextResponse:
    body = generate_latest(state.metrics.registry)
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)


async def model_info(state: State) -> JSONResponse:
    detector, settings = state.detector, state.settings
    if detector is None:
        return state.unavailable("the model is still loading", "model_loading")
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


def info_router(keys: KeyRing) -> APIRouter:
    """The routes, with ``/v1/model`` behind the key check where the server has keys."""
    router = APIRouter()
    router.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        operation_id="healthz",
        response_model=Health,
        summary="Liveness: the process answers",
    )
    router.add_api_route(
        "/readyz",
        readyz,
        methods=["GET"],
        operation_id="readyz",
        response_model=Readiness,
        summary="Readiness: the model is loaded",
        responses={503: {"model": Readiness, "description": "loading, or failed to load"}},
    )
    router.add_api_route(
        "/metrics",
        metrics_endpoint,
        methods=["GET"],
        operation_id="metrics",
        response_class=PlainTextResponse,
        summary="Prometheus metrics",
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
    )
    router.add_api_route(
        "/v1/model",
        model_info,
        methods=["GET"],
        operation_id="model_info",
        summary="What is served: model, classes, threshold, preprocessing, engine, limits",
        response_model=dict[str, Any],
        dependencies=guarded(keys),
        responses=error_responses(*([401] if keys.enabled else []), 503),
    )
    return router
