"""The server's model queue: images of concurrent requests grouped into batches (one forward at
a time, up to the detector's batch size, waiting at most ``max_wait_ms``, ``max_queue`` images
bounded), and the Prometheus metrics it and the server keep."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ...data.dataset import load_image
from ...inference.detector import Detector
from ...inference.pipeline import decode_and_forward


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
    """Groups images from concurrent requests into model batches (one forward at a time)."""

    def __init__(self, detector: Detector, settings: Any, metrics: Metrics) -> None:
        self.detector, self.settings, self.metrics = detector, settings, metrics
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending = 0
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="miragedet-model")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

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

    async def _run(self) -> None:
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
            items = [t for t, _ in live]
            try:
                probs, outcomes = await loop.run_in_executor(self.executor, self._forward, items)
            except Exception as exc:  # a failed forward fails its requests, not the server
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), row, outcome in zip(live, probs, outcomes, strict=True):
                if not future.done():
                    future.set_result((row, outcome))

    def _forward(self, items: list[Any]) -> tuple[list[Any], list[dict[str, Any] | None]]:
        """Probabilities, and the open-set outcome of models that have the test, through the
        scoring pipeline's stages (JPEGs decoded on the GPU when it has a decoder; one that
        neither the GPU nor Pillow decodes gets ``None`` and ``{"error": why}``)."""
        detector, limit = self.detector, self.settings.max_pixels

        def on_cpu(job: Any) -> torch.Tensor:
            return detector.preprocess(load_image(job.data, limit, draft_size=detector.draft_size))

        probs, outcomes, errors = decode_and_forward(detector, items, on_cpu)
        for i, why in errors.items():
            outcomes[i] = {"error": why}
        return probs, outcomes
