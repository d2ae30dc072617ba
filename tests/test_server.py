"""The HTTP service: a real uvicorn process on 127.0.0.1, and in-process checks of readiness
and overload (which need a model that can be held still)."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SERVER_KEY as KEY
from conftest import in_process
from miragedet.apps.server import ServerSettings, create_app
from miragedet.inference.detector import Detector


def _png(size=(24, 24), color=(120, 40, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_truncated() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((128, 128), 40).convert("RGB").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data[: len(data) // 2]


def _post(base, files=None, json=None, key=KEY, **kw):
    headers = {"X-API-Key": key} if key else {}
    return httpx.post(
        f"{base}/v1/detect", files=files, json=json, headers=headers, timeout=300, **kw
    )


def test_valid_requests_multipart_and_json(server):
    r = _post(
        server,
        files=[
            ("files", ("a.png", _png(), "image/png")),
            ("files", ("b.png", _png(color=(1, 2, 3)), "image/png")),
        ],
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["name"] for x in results] == ["a.png", "b.png"]
    for x in results:
        assert 0 <= x["fake_prob"] <= 1 and x["label"] in ("real", "fake")
        assert x["model_id"].startswith("ckpt@") and x["threshold"] == 0.5
        assert x["provenance"]["summary"].startswith("no provenance metadata")
    r2 = _post(
        server, json={"images": [{"data": base64.b64encode(_png()).decode(), "name": "a.png"}]}
    )
    assert r2.status_code == 200
    assert r2.json()["results"][0]["fake_prob"] == pytest.approx(results[0]["fake_prob"])
    info = httpx.get(f"{server}/v1/model", headers={"X-API-Key": KEY}).json()
    assert info["classes"] == ["Real", "Fake"] and info["method"] == "mirage"


def test_errors_have_their_status(server):
    assert _post(server, files={"files": ("a.png", _png())}, key=None).status_code == 401
    assert _post(server, files={"files": ("a.png", _png())}, key="wrong").status_code == 401
    big_body = _post(server, files={"files": ("big.bin", os.urandom(1_200_000))})
    assert big_body.status_code == 413 and "limit" in big_body.json()["detail"]
    bomb = _post(server, files={"files": ("bomb.png", _png(size=(1500, 1500)))})
    assert bomb.status_code == 413 and "too large" in bomb.json()["detail"]
    text = _post(server, files={"files": ("text.png", b"just some text")})
    assert text.status_code == 415
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, "ICO")
    assert _post(server, files={"files": ("x.ico", ico.getvalue())}).status_code == 415
    broken = _post(server, files={"files": ("cut.jpg", _jpeg_truncated())})
    assert broken.status_code == 422 and "truncated" in broken.json()["detail"]
    assert _post(server, json={"images": []}).status_code == 422


def test_one_bad_image_does_not_take_the_batch_down(server):
    r = _post(
        server,
        files=[
            ("files", ("good.png", _png())),
            ("files", ("bad.png", b"nope")),
            ("files", ("cut.jpg", _jpeg_truncated())),
        ],
    )
    assert r.status_code == 200
    statuses = [(x["name"], x["status"]) for x in r.json()["results"]]
    assert statuses == [("good.png", 200), ("bad.png", 415), ("cut.jpg", 422)]
    assert r.json()["results"][0]["fake_prob"] is not None


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_the_server_says_how_long_it_took_to_be_ready(server, served_checkpoint):
    # the subprocess server (`miragedet serve`): the gauge, counted from the command's start
    ready = _metric(httpx.get(f"{server}/metrics").text, "miragedet_ready_seconds")
    assert ready > 0
    # in process: the log line, once the model has loaded
    app = create_app(ServerSettings(model=str(served_checkpoint), provenance=False))

    async def wait_ready() -> str:
        async with in_process(app) as client:
            return (await client.get("/metrics")).text

    # a handler of our own on "uvicorn.error": caplog sees that logger only through propagation,
    # which uvicorn's logging config (any uvicorn run earlier in the session) turns off
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("uvicorn.error")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        text = asyncio.run(wait_ready())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    [line] = [r.getMessage() for r in records if "ready in" in r.getMessage()]
    assert float(line.split("ready in ")[1].split()[0]) == pytest.approx(
        _metric(text, "miragedet_ready_seconds"), abs=0.01
    )
    assert "; on cpu" in line  # where it scores, as detect's header says it (a GPU: its batch)


def test_concurrent_requests_are_all_answered_and_counted(server):
    before = httpx.get(f"{server}/metrics").text
    with ThreadPoolExecutor(12) as pool:
        codes = list(
            pool.map(
                lambda i: (
                    _post(
                        server, files={"files": (f"{i}.png", _png(color=(i * 20, 0, 0)))}
                    ).status_code
                ),
                range(12),
            )
        )
    assert codes == [200] * 12
    after = httpx.get(f"{server}/metrics").text
    images = _metric(after, "miragedet_batch_size_sum") - _metric(
        before, "miragedet_batch_size_sum"
    )
    assert images == 12


def test_health_cors_and_page(server):
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    r = httpx.options(
        f"{server}/v1/detect",
        headers={"Origin": "http://example.org", "Access-Control-Request-Method": "POST"},
    )
    assert r.headers.get("access-control-allow-origin") == "http://example.org"
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "miragedet" in page.text
    assert httpx.get(f"{server}/static/app.js").status_code == 200
    assert "/v1/detect" in httpx.get(f"{server}/openapi.json").json()["paths"]


def _gated_detector() -> type[Detector]:
    """A detector class whose forward waits for its ``gate``, to hold the queue full."""

    class Gated(Detector):
        gate = threading.Event()

        def forward_tensors(self, pixels: torch.Tensor) -> np.ndarray:
            assert self.gate.wait(timeout=600), "the test never opened the gate"
            return super().forward_tensors(pixels)

    return Gated


async def _until(client: httpx.AsyncClient, condition) -> None:
    """Poll the app until ``condition(client)`` holds; the bound only catches a hang."""
    for _ in range(12_000):  # 12,000 x 0.05 s = 10 minutes
        if await condition(client):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never reached")


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


def _queued(n: int):
    async def condition(client: httpx.AsyncClient) -> bool:
        return _metric((await client.get("/metrics")).text, "miragedet_queue_images") == n

    return condition


def test_readiness_and_overload_in_process(served_checkpoint):
    release_load = threading.Event()
    gated = _gated_detector()

    def loader():
        release_load.wait(timeout=600)
        return gated.from_pretrained(served_checkpoint)

    settings = ServerSettings(
        model=str(served_checkpoint), max_queue=2, batch_size=2, max_wait_ms=1
    )
    app = create_app(settings, load_detector=loader)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            assert (await client.get("/readyz")).status_code == 503
            loading = await client.post("/v1/detect", files={"files": ("a.png", _png())})
            assert loading.status_code == 503 and loading.headers["retry-after"] == "1"
            release_load.set()
            await _until(client, _ready)
            assert (await client.get("/readyz")).json() == {"ready": True}
            two = [("files", (f"{i}.png", _png())) for i in range(2)]
            held = asyncio.create_task(client.post("/v1/detect", files=two))
            await _until(client, _queued(2))  # the two images now wait in the (blocked) model
            full = await client.post("/v1/detect", files={"files": ("c.png", _png())})
            assert full.status_code == 503 and full.headers["retry-after"] == "1"
            gated.gate.set()
            assert (await held).status_code == 200
            after = await client.post("/v1/detect", files={"files": ("d.png", _png())})
            assert after.status_code == 200
            metrics = (await client.get("/metrics")).text
            assert 'miragedet_requests_total{status="503"} 2.0' in metrics

    asyncio.run(scenario())


def test_requests_that_wait_together_share_a_forward(served_checkpoint):
    """While one forward runs, the requests that arrive wait in the queue and are then scored
    together: 12 images in 2 forwards (held still with a gate, so no timing is involved)."""
    gated = _gated_detector()
    settings = ServerSettings(model=str(served_checkpoint), max_queue=64, batch_size=16)
    app = create_app(settings, load_detector=lambda: gated.from_pretrained(served_checkpoint))

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            await _until(client, _ready)
            first = asyncio.create_task(
                client.post("/v1/detect", files={"files": ("0.png", _png())})
            )
            await _until(client, _queued(1))  # the first image is in the (blocked) forward
            rest = [
                asyncio.create_task(
                    client.post("/v1/detect", files={"files": (f"{i}.png", _png(color=(i, 0, 0)))})
                )
                for i in range(1, 12)
            ]
            await _until(client, _queued(12))
            gated.gate.set()
            answers = [await first] + [await r for r in rest]
            assert [a.status_code for a in answers] == [200] * 12
            metrics = (await client.get("/metrics")).text
            assert _metric(metrics, "miragedet_batch_size_sum") == 12
            assert _metric(metrics, "miragedet_batch_size_count") == 2

    asyncio.run(scenario())


def test_the_next_batch_is_staged_while_one_is_in_the_model():
    """The model queue's two stages: batch 2 is collected and staged (decoded, stacked) while
    batch 1 is in the model (a serial queue would stage it only after batch 1's forward, and
    this test's forward, which waits for that staging, would time out); batch 3 waits for a
    free slot (two batches at most on the device); a batch whose results cannot be delivered
    fails its own requests and the queue goes on."""
    from types import SimpleNamespace

    from miragedet import MiraGe, ModelConfig
    from miragedet.apps.server.batching import Batcher, Metrics
    from miragedet.model.backbone import load_backbone

    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    detector = Detector(model, batch_size=2, precision="fp32")
    # a long wait: all the tensors are queued before the collector runs, so batches fill at once
    settings = SimpleNamespace(max_queue=64, max_wait_ms=5000, max_pixels=10**8)
    batcher = Batcher(detector, settings, Metrics())
    second_staged, stage_threads, forwards, finished = threading.Event(), [], [], []
    stage, forward = batcher._stage, batcher._forward

    def staging(items):
        stage_threads.append(threading.current_thread().name)
        if len(stage_threads) == 2:
            second_staged.set()
        if len(stage_threads) == 3:
            assert finished, "batch 3 was staged while batches 1 and 2 were on the device"
        return stage(items)

    def forwarding(batch):
        forwards.append(len(batch.prepared))
        if len(forwards) == 1:
            assert second_staged.wait(timeout=120), "batch 2 was not staged beside batch 1"
        out = forward(batch)
        finished.append(len(forwards))
        return out

    batcher._stage, batcher._forward = staging, forwarding
    size = detector.preprocess.image_size
    tensors = [
        torch.rand(3, size, size, generator=torch.Generator().manual_seed(i)) for i in range(6)
    ]

    async def scenario():
        batcher.start()
        try:
            results = await asyncio.wait_for(batcher.submit(tensors), timeout=300)
            batcher._forward = lambda batch: ([], [])  # results that cannot be delivered
            with pytest.raises(ValueError):
                await asyncio.wait_for(batcher.submit(tensors[:2]), timeout=300)
            batcher._forward = forward  # the queue goes on
            again = await asyncio.wait_for(batcher.submit(tensors[:1]), timeout=300)
            return results, again
        finally:
            await batcher.stop()

    results, again = asyncio.run(scenario())
    assert forwards == [2, 2, 2] and all(
        name.startswith("miragedet-device") for name in stage_threads
    )
    expected = detector.forward_tensors(torch.stack(tensors))
    assert np.allclose(np.stack([row for row, _ in results]), expected, atol=1e-5)
    assert np.allclose(again[0][0], expected[0], atol=1e-5)
