"""The server's model queue: images of concurrent requests grouped into batches (one forward at
a time, up to the detector's batch size, waiting at most ``max_wait_ms``, ``max_queue`` images
bounded), and the Prometheus metrics it and the server keep.

Two stages, as in :mod:`miragedet.inference.pipeline`: while a batch is in the model, the next
one is collected and staged (its JPEGs decoded on the GPU on a stream of its own, its inputs
stacked on the device), so the GPU decoder and the model do not take turns."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ...data.dataset import load_image
from ...inference.detector import Detector
from ...inference.pipeline import Batch, device_batch, forward_batch, on_stream, side_stream


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
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
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
    next batch is staged meanwhile, one at most)."""

    def __init__(self, detector: Detector, settings: Any, metrics: Metrics) -> None:
        self.detector, self.settings, self.metrics = detector, settings, metrics
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending = 0
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="miragedet-model")
        self.stager = ThreadPoolExecutor(1, thread_name_prefix="miragedet-device")
        self.stream = side_stream(detector.device)
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        staged: asyncio.Queue = asyncio.Queue(maxsize=1)  # one batch waits while one is scored
        self.tasks = [
            loop.create_task(self._collect(staged)),
            loop.create_task(self._score(staged)),
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.stager.shutdown(wait=False, cancel_futures=True)

    async def submit(
        self, tensors: list[torch.Tensor]
    ) -> list[tuple[np.ndarray, dict[str, Any] | None]]:
        """Each tensor's probabilities and open-set outcome (None without the test)."""
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

    async def _collect(self, staged: asyncio.Queue) -> None:
        """Stage 2: batches from the queue, decoded and stacked in the device thread."""
        loop = asyncio.get_running_loop()
        wait = self.settings.max_wait_ms / 1000.0
        while True:
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
                continue
            self.metrics.batch_size.observe(len(live))
            try:
                ready = await loop.run_in_executor(self.stager, self._stage, [t for t, _ in live])
            except Exception as exc:  # a failed batch fails its requests, not the server
                _fail(live, exc)
                continue
            await staged.put((live, ready))

    async def _score(self, staged: asyncio.Queue) -> None:
        """Stage 3: each staged batch through the model, the requests answered."""
        loop = asyncio.get_running_loop()
        while True:
            live, ready = await staged.get()
            try:
                probs, outcomes = await loop.run_in_executor(self.executor, self._forward, ready)
            except Exception as exc:
                _fail(live, exc)
                continue
            finally:
                ready = None  # its pixels go before the next batch waits here
            for (_, future), row, outcome in zip(live, probs, outcomes, strict=True):
                if not future.done():
                    future.set_result((row, outcome))

    def _stage(self, items: list[Any]) -> Batch:
        """The batch's JPEG jobs decoded on the GPU when it has a decoder (one that fails there
        is decoded by Pillow; one that neither decodes becomes its error), inputs stacked."""
        detector, limit = self.detector, self.settings.max_pixels

        def on_cpu(job: Any) -> torch.Tensor:
            return detector.preprocess(load_image(job.data, limit, draft_size=detector.draft_size))

        def stage(batch: list[Any]) -> Batch:
            return device_batch(detector.gpu_decoder, detector.device, batch, batch, on_cpu)

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
