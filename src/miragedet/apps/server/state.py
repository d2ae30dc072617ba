"""What the routes share (settings, keys, metrics, the detector and its batcher) and its life.

One :class:`ServerState` per application, on ``app.state.server``; routes reach it through the
:data:`State` dependency. The model loads once, in the background at start-up (:func:`lifespan`):
until it is ready, ``detector`` is None and ``load_error`` says why when loading failed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from ...inference.compiled import compile_ahead
from ...inference.detector import Detector
from ...inference.detector import load_detector as load_detector_for
from .batching import Batcher, Metrics
from .keys import KeyRing
from .settings import ServerSettings
from .uploads import error

log = logging.getLogger("uvicorn.error")


def default_loader(settings: ServerSettings) -> Detector:
    """The detector that ``settings`` name, for a long-lived server."""
    return load_detector_for(
        settings.model,
        settings.detector_config(),
        # a first-time ONNX export and measurement (--backend auto) says so in the log
        notify=lambda message: log.info("miragedet: %s", message),
        images=math.inf,  # long-lived: torch.compile competes
    )


@dataclass
class ServerState:
    settings: ServerSettings
    keys: KeyRing
    metrics: Metrics
    loader: Callable[[], Detector]
    started: float  # time.monotonic() from which readiness is counted
    detector: Detector | None = None  # None until the model is loaded
    batcher: Batcher | None = None
    load_error: str | None = None

    @classmethod
    def create(
        cls,
        settings: ServerSettings,
        load_detector: Callable[[], Detector] | None = None,
        started: float | None = None,
    ) -> ServerState:
        keys = KeyRing(
            Path(settings.api_keys_file) if settings.api_keys_file else None,
            settings.api_key,
            settings.rate_limit,
            settings.daily_images,
        )
        return cls(
            settings=settings,
            keys=keys,
            metrics=Metrics(),
            loader=load_detector or functools.partial(default_loader, settings),
            started=time.monotonic() if started is None else started,
        )

    def unavailable(self, detail: str, code: str) -> JSONResponse:
        """A 503 with the server's Retry-After."""
        headers = {"Retry-After": str(self.settings.retry_after_s)}
        return error(detail, 503, code, headers=headers)

    async def load(self) -> None:
        """Load (and compile) the model, then start the batcher; a failure is kept as
        ``load_error``."""
        try:
            detector = await asyncio.to_thread(self.loader)
            await asyncio.to_thread(compile_ahead, detector)  # torch.compile: before ready
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            return
        self.batcher = Batcher(detector, self.settings, self.metrics)
        self.batcher.start()
        self.detector = detector
        self.metrics.ready.set(1)
        elapsed = time.monotonic() - self.started
        self.metrics.ready_seconds.set(elapsed)
        engine = detector.engine_info()
        log.info(
            "miragedet: ready in %.2f s; engine %s (%s); %s %s; %s", elapsed, engine["backend"],
            engine["reason"], detector.precision, detector.precision_reason, detector.placement(),
        )  # fmt: skip


@asynccontextmanager
async def lifespan(app: FastAPI):
    """The model loads in the background while the server already answers; the batcher stops
    at shutdown."""
    state: ServerState = app.state.server
    state.detector = None
    state.batcher = None
    state.load_error = None
    loading = asyncio.create_task(state.load())
    try:
        yield
    finally:
        loading.cancel()
        if state.batcher is not None:
            await state.batcher.stop()


async def get_state(request: Request) -> ServerState:
    """The application's shared state (a FastAPI dependency; async: no thread hop)."""
    return request.app.state.server


#: A route's parameter annotated ``State`` receives the application's :class:`ServerState`.
State = Annotated[ServerState, Depends(get_state)]
