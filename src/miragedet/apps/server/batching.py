"""The server's model queue: images of concurrent requests grouped into batches (one forward at
a time, up to the detector's batch size, waiting at most ``max_wait_ms``, ``max_queue`` images
bounded), and the Prometheus metrics it and the server keep.

Two stages, as in :mod:`miragedet.inference.pipeline`: while a batch is in the model, the next
one is collected and staged (its JPEGs decoded on the GPU on a stream of its own, its inputs
stacked on the device), so the GPU decoder and the model do not take turns."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ...data.dataset import load_image
from ...inference.detector import Detector
from ...inference.pipeline import Batch, device_batch, forward_batch, on_stream, side_stream

log = logging.getLogger("uvicorn.error")  # where the server's own lines go (state.py)


class QueueFull(Exception):
    pass


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "miragedet_requests", "HTTP requests to /v1/detect by status", ["status"], registry=r
        )
        self.latency = Histogram("miragedet_request_seconds", "Latency of /v1/detect", registry=r)
        self.images = Counter(
            "miragedet_images", "Images received, by outcome", ["outcome"], registry=r
        )
        self.batch_size = Histogram(
            "miragedet_batch_size",
            "Images per model forward",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),  # GPU_BATCH_MAX
            registry=r,
        )
        self.queue = Gauge("miragedet_queue_images", "Images waiting or being scored", registry=r)
        self.ready = Gauge("miragedet_ready", "1 once the model is loaded", registry=r)
        self.ready_seconds = Gauge(
            "miragedet_ready_seconds",
            "Seconds from the start of `miragedet serve` (or of the app) to the model loaded",
            registry=r,
        )
        # per API key (its name from --api-keys, never the key itself)
        self.key_requests = Counter(
            "miragedet_key_requests", "Requests to /v1/detect by API key name", ["key"], registry=r
        )
        self.key_images = Counter(
            "miragedet_key_images", "Images accepted for scoring by API key name", ["key"],
            registry=r,
        )  # fmt: skip
        self.key_refused = Counter(
            "miragedet_key_refused",
            "Requests refused by a key's rate limit or daily image quota",
            ["key", "reason"],
            registry=r,
        )


class Batcher:
    """Groups images from concurrent requests into model batches (one forward at a time; the
    next batch is staged meanwhile: two batches at most are on the device)."""

    def __init__(self, detector: Detector, settings: Any, metrics: Metrics) -> None:
        self.detector, self.settings, self.metrics = detector, settings, metrics
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending = 0
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="miragedet-model")
        self.stager = ThreadPoolExecutor(1, thread_name_prefix="miragedet-device")
        self.stream = side_stream(detector.device)
        self.tasks: list[asyncio.Task] = []
        # one batch in the model and one staged, at most: a slot is taken before a batch is
        # collected and given back once its forward is done
        self.slots = asyncio.Semaphore(2)
        self.staged: asyncio.Queue = asyncio.Queue()
        self.in_flight: list[list[tuple[Any, asyncio.Future]]] = []  # staged or in the model

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._collect()), loop.create_task(self._score())]
        for task in self.tasks:
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        """A queue task that ended other than by stop(): said, and every waiting request
        answered with the error (none would ever be), the server no longer ready."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("miragedet: the model queue stopped: %r", task.exception())
        self.metrics.ready.set(0)
        self._fail_all(RuntimeError(f"the model queue stopped: {task.exception()!r}"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self._fail_all(RuntimeError("the server is shutting down"))
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.stager.shutdown(wait=False, cancel_futures=True)

    def _fail_all(self, exc: Exception) -> None:
        """Every request still waiting (queued, staged, in the model) answered with ``exc``."""
        for live in self.in_flight:
            _fail(live, exc)
        self.in_flight.clear()
        while not self.queue.empty():
            _fail([self.queue.get_nowait()], exc)

    async def submit(
        self, tensors: list[torch.Tensor]
    ) -> list[tuple[np.ndarray, dict[str, Any] | None]]:
        """Each tensor's probabilities and open-set outcome (None without the test)."""
        stopped = next((t for t in self.tasks if t.done()), None)
        if stopped is not None:  # nothing would ever answer: said at once
            raise RuntimeError("the model queue has stopped; restart the server")
        if self.pending + len(tensors) > self.settings.max_queue:
            raise QueueFull
        self.pending += len(tensors)
        self.metrics.queue.set(self.pending)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in tensors]
        for tensor, future in zip(tensors, futures, strict=True):
            self.queue.put_nowait((tensor, future))
        try:
            return list(await asyncio.gather(*futures))
        finally:
            self.pending -= len(tensors)
            self.metrics.queue.set(self.pending)

    async def _collect(self) -> None:
        """Stage 2: batches from the queue, decoded and stacked in the device thread."""
        loop = asyncio.get_running_loop()
        wait = self.settings.max_wait_ms / 1000.0
        while True:
            await self.slots.acquire()
            batch = [await self.queue.get()]
            deadline = loop.time() + wait
            while len(batch) < self.detector.batch_size:  # --batch-size, or the detector's
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(t, f) for t, f in batch if not f.done()]
            if not live:
                self.slots.release()
                continue
            self.in_flight.append(live)
            try:
                self.metrics.batch_size.observe(len(live))
                ready = await loop.run_in_executor(self.stager, self._stage, [t for t, _ in live])
            except Exception as exc:  # a failed batch fails its requests, not the server
                self._done(live, exc)
                continue
            self.staged.put_nowait((live, ready))

    async def _score(self) -> None:
        """Stage 3: each staged batch through the model, the requests answered."""
        loop = asyncio.get_running_loop()
        while True:
            live, ready = await self.staged.get()
            try:
                probs, outcomes = await loop.run_in_executor(self.executor, self._forward, ready)
                for (_, future), row, outcome in zip(live, probs, outcomes, strict=True):
                    if not future.done():
                        future.set_result((row, outcome))
            except Exception as exc:  # fails its requests, not the server
                self._done(live, exc.with_traceback(None))  # the trace holds the batch's tensors
            else:
                self._done(live)
            finally:
                ready = None  # its pixels go before the next batch is taken

    def _done(self, live: list[tuple[Any, asyncio.Future]], exc: Exception | None = None) -> None:
        """A batch finished (answered, or failed with ``exc``): its slot is free again."""
        if exc is not None:
            _fail(live, exc)
        self.in_flight = [b for b in self.in_flight if b is not live]  # by identity: tensors inside
        self.slots.release()

    def _stage(self, items: list[Any]) -> Batch:
        """The batch's JPEG jobs decoded on the GPU when it has a decoder (one that fails there
        is decoded by Pillow; one that neither decodes becomes its error), inputs stacked."""
        detector, limit = self.detector, self.settings.max_pixels

        def on_cpu(job: Any) -> torch.Tensor:
            return detector.preprocess(load_image(job.data, limit, draft_size=detector.draft_size))

        def stage(batch: list[Any]) -> Batch:
            return device_batch(
                detector.gpu_decoder, detector.device, batch, batch, on_cpu, owner=detector
            )

        return on_stream(self.stream, stage, items)

    def _forward(self, batch: Batch) -> tuple[list[Any], list[dict[str, Any] | None]]:
        """Probabilities, and the open-set outcome of models that have the test; an input that
        could not be decoded gets ``None`` and ``{"error": why}``."""
        probs, outcomes = forward_batch(self.detector, batch)
        for i, why in batch.errors.items():
            outcomes[i] = {"error": why}
        return probs, outcomes


def _fail(live: list[tuple[Any, asyncio.Future]], exc: Exception) -> None:
    for _, future in live:
        if not future.done():
            future.set_exception(exc)
