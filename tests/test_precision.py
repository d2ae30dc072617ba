"""Precision chosen by the hardware: `auto` never picks an emulated (slow) bf16."""

from __future__ import annotations

import warnings

import pytest
import torch

from miragedet import MiraGe, ModelConfig
from miragedet.inference import precision
from miragedet.inference.detector import Detector
from miragedet.training.precision import training_precision


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


@pytest.mark.parametrize("native, expected", [(False, "none"), (True, "bf16")])
def test_train_amp_auto_never_picks_an_emulated_precision(monkeypatch, tmp_path, native, expected):
    """`train --amp auto`: bf16 only where the CPU computes it natively; an explicit bf16
    without it warns, naming --amp; the trainer's autocast follows the resolved choice."""
    from miragedet.data.synthetic import write_layout
    from miragedet.training.config import TrainConfig
    from miragedet.training.log import NoLog
    from miragedet.training.trainer import Trainer

    monkeypatch.setattr(precision, "cpu_native", lambda kind: native)
    choice = training_precision("auto", "cpu")
    assert choice.precision == expected and choice.reason.startswith("auto:")
    data = write_layout(tmp_path / "data", "ufd", ("grid-2",), n_per_class=8)
    config = TrainConfig(data=str(data), backbone="tiny", depth=2, batch_size=8, workers=0,
                         amp="auto", output=str(tmp_path / "run"), device="cpu")  # fmt: skip
    trainer = Trainer(config)
    assert trainer.amp == expected
    with trainer._autocast():
        assert torch.is_autocast_enabled("cpu") is native
    if native:  # validation: on a GPU at the training precision, on a CPU in fp32 as before
        import contextlib

        entered = []

        @contextlib.contextmanager
        def autocast():
            entered.append(True)
            yield

        trainer._autocast = autocast
        trainer.val_set = trainer.train_set
        trainer._validate_and_save(NoLog())
        assert entered == []  # a CPU: fp32, scores as before
        trainer.device = torch.device("cuda")  # a GPU (stand-in: the model stays on the CPU)
        trainer._validate_and_save(NoLog())
        assert entered == [True]
    monkeypatch.setattr(precision, "cpu_native", lambda kind: False)
    with pytest.warns(precision.SlowPrecisionWarning, match="--amp bf16 on a CPU"):
        assert training_precision("bf16", "cpu").precision == "bf16"
    assert training_precision("none", "cpu").precision == "none"
    with pytest.raises(ValueError, match="amp must be one of"):
        training_precision("fp8", "cpu")


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


def test_threads_follow_the_cpus_the_process_may_use(tmp_path):
    """Affinity and cgroup quotas (v2 cpu.max, v1 cfs files) limit the CPUs counted; PyTorch's
    pool is set from them in a process pinned to one CPU (unless OMP_NUM_THREADS says)."""
    import os
    import subprocess
    import sys

    from miragedet.inference.threads import _quota, available_cpus

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert _quota(v2) == 1.5
    assert available_cpus(v2).count == min(2, len(os.sched_getaffinity(0)))
    (v2 / "cpu.max").write_text("max 100000\n")
    assert _quota(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    limited = available_cpus(v1)
    assert limited.count == 1 and limited.source in ("cgroup quota", "affinity", "host")
    assert "1" in limited.describe()
    code = (
        "import os, torch; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from miragedet.inference.threads import configure_torch; torch.set_num_threads(4); "
        "print(configure_torch())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr
    env["OMP_NUM_THREADS"] = "3"  # the user's choice wins
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == "4", done.stderr


def test_text_embeddings_made_under_autocast_are_not_reused_in_fp32(tiny):
    """The class prompts' embeddings are cached at inference; one made under bf16 autocast
    (training's validation on a GPU) is not what an fp32 pass reads back afterwards."""
    from miragedet import MiraGe, ModelConfig

    model = MiraGe(tiny, ModelConfig.for_method("mirage", depth=2)).eval()
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.encode_text()
        cached = model.encode_text()
        model._text_cache = None
        fresh = model.encode_text()
    assert torch.equal(cached, fresh)
