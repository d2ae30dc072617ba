"""Precision chosen by the hardware: `auto` never picks an emulated (slow) bf16."""

from __future__ import annotations

import warnings

import pytest
import torch

from miragedet import MiraGe, ModelConfig
from miragedet.inference import precision
from miragedet.inference.detector import Detector


@pytest.mark.parametrize("native, expected", [(False, "fp32"), (True, "bf16")])
def test_auto_follows_native_bf16_support_on_cpu(monkeypatch, tiny, native, expected):
    monkeypatch.setattr(precision, "cpu_native", lambda kind: native)
    choice = precision.resolve("auto", "cpu")
    assert choice.precision == expected
    assert ("natively" in choice.reason) is native and choice.reason.startswith("auto:")
    detector = Detector(MiraGe(tiny, ModelConfig.for_method("mirage", depth=2)))
    assert detector.precision == expected
    assert (
        detector.model.clip.logit_scale.dtype
        == {"fp32": torch.float32, "bf16": torch.bfloat16}[expected]
    )
    assert detector.info()["precision"] == expected
    assert detector.info()["precision_reason"] == choice.reason


def test_explicit_bf16_without_native_support_warns_and_with_it_does_not(monkeypatch):
    monkeypatch.setattr(precision, "cpu_native", lambda kind: False)
    with pytest.warns(precision.SlowPrecisionWarning, match="emulated"):
        assert precision.resolve("bf16", "cpu").precision == "bf16"
    monkeypatch.setattr(precision, "cpu_native", lambda kind: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve("bf16", "cpu") == precision.Choice("bf16", "as requested")
        assert precision.resolve("fp32", "cpu").precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve("int4", "cpu")


def test_the_server_reports_the_choice(served_checkpoint):
    import asyncio

    import httpx

    from miragedet.apps.server import ServerSettings, create_app

    app = create_app(ServerSettings(model=str(served_checkpoint)))

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            for _ in range(12_000):  # a hang guard: readiness ends the wait
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            return (await client.get("/v1/model")).json()

    info = asyncio.run(scenario())
    assert info["precision"] == precision.resolve("auto", "cpu").precision
    assert info["precision_reason"].startswith("auto:")


def test_int8_stays_within_tolerance_of_fp32_and_agrees_on_verdicts(tiny, tmp_path):
    """A tiny MiraGe trained on the synthetic fingerprint task, saved, then loaded from the same
    checkpoint in fp32 and int8 (no extra file): p(fake) within the stated tolerance and the
    same verdict on >= 99% of a held-out synthetic set."""
    import numpy as np

    from conftest import fit_tiny
    from miragedet.data.synthetic import SEEN, make_set

    size = tiny.preprocess.image_size
    images, labels = make_set(600, size, SEEN, seed=1)
    model, _ = fit_tiny(tiny, tiny.preprocess.batch(images), labels, steps=200)
    model.save_pretrained(str(tmp_path / "ckpt"))
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    test_images, test_labels = make_set(400, size, SEEN, seed=2)
    arrays = [np.asarray(im) for im in test_images]
    fp32 = Detector.from_pretrained(tmp_path / "ckpt", precision="fp32")
    int8 = Detector.from_pretrained(tmp_path / "ckpt", precision="int8")
    assert int8.precision == "int8" and fp32.precision == "fp32"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == before  # nothing written
    a = fp32.predict_proba(arrays)[:, 1]
    b = int8.predict_proba(arrays)[:, 1]
    assert np.abs(a - b).max() <= precision.INT8_TOLERANCE
    assert not np.array_equal(a, b)  # int8 really ran
    assert ((a >= 0.5) == (b >= 0.5)).mean() >= 0.99
    assert ((a >= 0.5) == np.asarray(test_labels)).mean() >= 0.9  # a model worth comparing
    with pytest.raises(ValueError, match="CPU path"):
        precision.resolve("int8", "cuda")
