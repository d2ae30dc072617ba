"""`--backend auto` (inference/engine.py): the faster engine that gives the same scores, measured
once per machine + model + view + batch size and cached; every reason it cannot use ONNX Runtime
is shown, never an error. No timing is asserted: which engine wins is the machine's business."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from miragedet import MiraGe, ModelConfig, save_pretrained
from miragedet.apps.cli import app
from miragedet.inference import engine
from miragedet.inference.detector import Detector, load_detector
from miragedet.model.backbone import load_backbone


@pytest.fixture
def checkpoint(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MIRAGEDET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MIRAGEDET_BACKEND", raising=False)  # the suite's pin (conftest.py)
    torch.manual_seed(1)
    path = tmp_path / "ckpt"
    save_pretrained(MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2)), path)
    return path


def _images(n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (40, 48, 3), np.uint8) for _ in range(n)]


def test_auto_measures_once_caches_and_scores_as_fp32(checkpoint, tmp_path):
    heard: list[str] = []
    first = load_detector(str(checkpoint), "auto", notify=heard.append, precision="fp32")
    assert first.engine is not None and not first.engine.cached
    assert any("exporting the ONNX graph once" in m for m in heard)  # written once, here
    assert (checkpoint / "model.onnx").is_file()
    assert set(first.engine.measured) == {"torch fp32", "onnx fp32"}
    assert first.engine.parity is not None and first.engine.parity <= engine.PARITY
    again = load_detector(str(checkpoint), "auto", notify=heard.append, precision="fp32")
    assert again.engine.cached and again.engine.backend == first.engine.backend
    assert len(heard) == 2  # nothing exported or measured the second time
    reference = Detector.from_pretrained(checkpoint, precision="fp32").predict_proba(_images())
    for backend in ("torch", "onnx"):  # whichever the machine picks, the same scores
        probs = load_detector(str(checkpoint), backend, precision="fp32").predict_proba(_images())
        np.testing.assert_allclose(probs, reference, atol=1e-4)
    info = again.info()["engine"]
    assert info["backend"] == again.engine.backend and info["cached"] is True


def test_the_cache_key_follows_model_view_batch_and_precision(checkpoint, tmp_path):
    key = engine.cache_key(checkpoint, None, 32, "auto")
    assert key == engine.cache_key(checkpoint, None, 32, "auto")
    assert key != engine.cache_key(checkpoint, None, 8, "auto")
    assert key != engine.cache_key(checkpoint, {"kind": "tiles"}, 32, "auto")
    assert key != engine.cache_key(checkpoint, None, 32, "fp32")
    other = tmp_path / "other"
    torch.manual_seed(2)  # other prompts, other weights
    save_pretrained(MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2)), other)
    assert key != engine.cache_key(other, None, 32, "auto")


def test_every_obstacle_falls_back_to_pytorch_with_its_reason(checkpoint, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    choice = engine.choose(checkpoint)
    assert choice.backend == "torch" and "onnxruntime is not installed" in choice.reason
    monkeypatch.delitem(sys.modules, "onnxruntime")

    def broken(*args, **kwargs):
        raise RuntimeError("an operator ONNX cannot express")

    monkeypatch.setattr("miragedet.inference.onnx.export_checkpoint", broken)
    choice = engine.choose(checkpoint)
    assert choice.backend == "torch" and "the ONNX export failed" in choice.reason
    assert "cannot express" in choice.reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "GPU" in engine.choose(checkpoint).reason
    assert "GPU" in engine.choose(checkpoint, device="auto").reason
    monkeypatch.undo()  # the rest loads models, on this machine's CPU
    bf16 = engine.choose(checkpoint, precision="bf16", device="cpu")
    assert "runs on PyTorch only" in bf16.reason
    (checkpoint / "model.onnx").write_bytes(b"damaged since it was measured")
    damaged = load_detector(str(checkpoint), "auto", engine=engine.EngineChoice("onnx", "cached"))
    assert damaged.model is not None and damaged.engine_info()["backend"] == "torch"
    assert "ONNX Runtime could not run the graph now" in damaged.engine.reason


def test_a_read_only_checkpoint_exports_into_the_user_cache(checkpoint, monkeypatch):
    real_access = engine.os.access

    def access(path, mode):  # as root, os.access says every folder is writable
        return False if Path(path) == checkpoint else real_access(path, mode)

    monkeypatch.setattr(engine.os, "access", access)
    graph = engine.onnx_graph(checkpoint)
    assert graph.is_file() and engine.cache_dir() in graph.parents
    assert not (checkpoint / "model.onnx").exists()
    choice = engine.choose(checkpoint, precision="fp32")
    assert choice.backend in ("torch", "onnx") and choice.measured


def test_a_downloaded_checkpoint_is_left_as_the_hub_wrote_it(checkpoint, monkeypatch, tmp_path):
    """A checkpoint resolved into the Hugging Face cache (a hub id) gets its graph in our cache,
    not beside the hub's files."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    graph = engine.onnx_graph(checkpoint)
    assert engine.cache_dir() in graph.parents and not (checkpoint / "model.onnx").exists()


def test_auto_is_the_default_of_detect_score_dataset_and_serve(checkpoint, tmp_path, monkeypatch):
    """No --backend: detect measures once and names the engine it chose in its header;
    score-dataset and serve reuse that choice (cached: nothing exported or measured again) and
    report it; whichever engine was chosen, the scores are PyTorch fp32's within PARITY (at
    --precision fp32). MIRAGEDET_BACKEND pins an engine for all of them."""
    import asyncio

    import pyarrow.parquet as pq
    from PIL import Image

    from conftest import in_process
    from miragedet.apps.server import ServerSettings, create_app
    from miragedet.inference.score_dataset import score_dataset

    folder = tmp_path / "images"
    folder.mkdir()
    for i, array in enumerate(_images(3)):
        Image.fromarray(array).save(folder / f"{i}.png")
    out = tmp_path / "rows.jsonl"
    args = ["detect", str(folder), "-m", str(checkpoint), "--precision", "fp32", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    header = " ".join(result.output.split())
    assert "exporting the ONNX graph once" in header and "measuring PyTorch and ONNX" in header
    assert "; engine " in header and "fastest here" in header and "ms/image" in header
    rows = sorted((json.loads(line) for line in out.read_text().splitlines()), key=str)
    reference = Detector.from_pretrained(checkpoint, precision="fp32")
    expected = reference.predict_proba([np.asarray(Image.open(r["path"])) for r in rows])
    np.testing.assert_allclose([r["fake_prob"] for r in rows], expected[:, 1], atol=engine.PARITY)
    chosen = json.loads((Path(engine.cache_dir()) / "engines.json").read_text())
    assert len(chosen) == 1  # one measurement for this machine + model + view + batch

    heard: list[str] = []
    report = score_dataset(folder, tmp_path / "shards", str(checkpoint), engine="local",
                           precision="fp32", notify=heard.append)  # fmt: skip
    assert report.scored == 3 and heard == []  # the choice came from the cache
    assert report.engine.split(":")[0] in ("torch", "onnx") and "ms/image" in report.engine
    table = pq.read_table(tmp_path / "shards").to_pandas().sort_values("path")
    np.testing.assert_allclose(table["fake_prob"], expected[:, 1], atol=engine.PARITY)

    async def served() -> dict:
        # measured at the batches it runs (--max-batch): 32, as detect's default batch above
        settings = ServerSettings(model=str(checkpoint), precision="fp32", batch_size=32)
        async with in_process(create_app(settings)) as client:
            return (await client.get("/v1/model")).json()

    # a server is a long-lived job: torch.compile competes, so the choice is measured again
    # once with it (in the same entry), then served from the cache
    described = asyncio.run(served())["engine"]
    assert described["cached"] is False and "torch.compile fp32" in described["ms_per_image"]
    assert described["backend"] in ("torch", "onnx", "compile")
    assert "compile" in described["reason"]  # chosen for the server, or "not worth" it
    assert asyncio.run(served())["engine"]["cached"] is True
    assert len(json.loads((Path(engine.cache_dir()) / "engines.json").read_text())) == 1

    from miragedet.apps.doctor import engine_check

    first, again = engine_check(str(checkpoint)), engine_check(str(checkpoint))
    assert first.ok and "(measured now)" in first.found and "ms/image" in first.found
    assert "(measured before)" in again.found  # doctor -m: precision auto, measured once
    listed = engine_check()
    assert "--backend auto (default); 2 choice(s)" in listed.found and "ckpt:" in listed.found

    monkeypatch.setenv("MIRAGEDET_BACKEND", "torch")  # a fleet's pin
    assert "--backend torch ($MIRAGEDET_BACKEND)" in engine_check().found
    pinned = CliRunner().invoke(app, args)
    assert pinned.exit_code == 0 and "; engine" not in pinned.output
    assert load_detector(str(checkpoint)).engine is None
    monkeypatch.setenv("MIRAGEDET_BACKEND", "gpu")  # a typo in the pin: said, with where from
    typo = CliRunner().invoke(app, args)
    assert typo.exit_code == 2 and "not 'gpu' (from $MIRAGEDET_BACKEND)" in typo.output


def test_int8_rides_the_faster_engine_within_the_stated_tolerance(tmp_path, monkeypatch):
    """ONNX Runtime's quantised graph scores within the int8 tolerance of fp32 and agrees on the
    verdicts, as PyTorch's dynamic int8 must; `--backend auto --precision int8` measures both."""
    from conftest import fit_tiny
    from miragedet.data.synthetic import SEEN, make_set
    from miragedet.inference.precision import INT8_TOLERANCE

    monkeypatch.setenv("MIRAGEDET_CACHE", str(tmp_path / "cache"))
    tiny = load_backbone("tiny")
    size = tiny.preprocess.image_size
    images, labels = make_set(600, size, SEEN, seed=1)
    model, _ = fit_tiny(tiny, tiny.preprocess.batch(images), labels, steps=200)
    save_pretrained(model, tmp_path / "ckpt")
    test_images, _ = make_set(200, size, SEEN, seed=2)
    arrays = [np.asarray(im) for im in test_images]
    fp32 = Detector.from_pretrained(tmp_path / "ckpt", precision="fp32").predict_proba(arrays)
    onnx = load_detector(str(tmp_path / "ckpt"), "auto", precision="int8")
    assert onnx.engine is not None and set(onnx.engine.measured) == {"torch int8", "onnx int8"}
    quantised = load_detector(str(tmp_path / "ckpt"), "onnx", precision="int8")
    assert quantised.precision == "int8" and (tmp_path / "ckpt" / "model.int8-w7.onnx").is_file()
    b = quantised.predict_proba(arrays)
    assert np.abs(fp32[:, 1] - b[:, 1]).max() <= INT8_TOLERANCE
    assert not np.array_equal(fp32, b)  # int8 really ran
    assert ((fp32[:, 1] >= 0.5) == (b[:, 1] >= 0.5)).mean() >= 0.99


def test_evaluate_scores_alike_on_every_engine_and_names_it(checkpoint, tmp_path):
    """evaluate --backend: the same report's scores on PyTorch fp32, on the exported graph
    (onnx), through torch.compile and on the default (auto, whichever it picks), within
    PARITY; the header names it."""
    import csv

    from miragedet.data.synthetic import write_layout

    data = write_layout(tmp_path / "data", "generic", ("grid-2",), n_per_class=6)
    scores = {}
    for backend in ("torch", "onnx", "compile", None):
        out = tmp_path / f"eval-{backend}"
        args = [
            "evaluate",
            "-m",
            str(checkpoint),
            str(data),
            "-o",
            str(out),
            "--workers",
            "0",
            "--precision",
            "fp32",
            "--batch-size",
            "8",
        ]  # compile: a batch of 8, 4 padded
        args += ["--backend", backend] if backend else []
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        header = " ".join(result.output.split())
        assert "; batch 8" in header  # as asked (without --batch-size: 64, or from GPU memory)
        if backend is None:
            assert "engine torch (" in header or "engine onnx (" in header
            assert "ms/image" in header  # the measured figures
        else:
            assert f"engine {backend} (as requested)" in header
        with (out / "scores.csv").open() as handle:
            rows = sorted(csv.DictReader(handle), key=lambda r: r["path"])
        scores[backend] = np.array([float(r["p_fake"]) for r in rows])
    assert len(scores["torch"]) == 12
    for backend in ("onnx", "compile", None):
        np.testing.assert_allclose(scores[backend], scores["torch"], atol=engine.PARITY)


def test_a_slow_model_is_timed_on_a_smaller_batch_within_the_budget(checkpoint, monkeypatch):
    """The timing fits MEASURE_BUDGET_S: a model whose check forward says the job's batch would
    overrun it is timed on fewer images, and the reason names the batch it was timed on."""
    monkeypatch.setattr(engine, "MEASURE_BUDGET_S", 1e-9)  # as if each image took hours
    choice = engine.choose(checkpoint, batch_size=32, precision="fp32")
    assert choice.measured and "batch 1" in choice.reason
    monkeypatch.setattr(engine, "MEASURE_BUDGET_S", 1e9)
    roomy = engine.choose(checkpoint, batch_size=4, precision="auto")
    assert "batch 4" in roomy.reason  # the job's own batch when it fits


def test_torch_compile_competes_for_a_large_job_and_wins_only_what_it_earns(
    checkpoint, monkeypatch
):
    """torch.compile is measured (compile time and scores too) only for a job large enough,
    once, with the other engines; a job gets it only when the time it saves over the job's
    images exceeds its compile; the detector then runs it, with PyTorch fp32's scores."""
    import dataclasses
    import math

    monkeypatch.setattr(engine, "COMPILE_MIN_IMAGES", 1000)
    heard: list[str] = []
    small = engine.choose(
        checkpoint, batch_size=4, precision="fp32", images=10, notify=heard.append
    )
    assert "torch.compile fp32" not in small.measured and not small.compile_tried
    assert "torch.compile" not in " ".join(heard)
    large = engine.choose(
        checkpoint, batch_size=4, precision="fp32", images=1e9, notify=heard.append
    )
    assert "torch.compile" in heard[-1]  # measured again, this time with torch.compile
    assert set(large.measured) == {"torch fp32", "onnx fp32", "torch.compile fp32"}
    assert large.compile_s > 0 and large.compile_note is None
    won = "saves" in large.reason if large.backend == "compile" else "not worth" in large.reason
    assert won, large.reason
    told = len(heard)
    again = engine.choose(
        checkpoint, batch_size=4, precision="fp32", images=1e9, notify=heard.append
    )
    assert again.cached and len(heard) == told and again.backend == large.backend

    # the weighing, on given figures: 2 ms/image saved over the fastest other, a 20 s compile
    figures = dataclasses.replace(large, backend="onnx", reason="fastest here", compile_s=20.0,
                                  measured={"torch fp32": 10.0, "onnx fp32": 8.0,
                                            "torch.compile fp32": 6.0})  # fmt: skip
    assert engine.weigh_compile(figures, 5_000).backend == "onnx"  # saves 10 s < 20 s
    assert (
        "not worth its 20 s compile for 5,000 images" in engine.weigh_compile(figures, 5_000).reason
    )
    chosen = engine.weigh_compile(figures, 50_000)  # saves 100 s
    assert chosen.backend == "compile" and "100 s over 50,000 images" in chosen.reason
    assert engine.weigh_compile(figures, math.inf).backend == "compile"  # a server
    assert engine.weigh_compile(figures, 999) == figures  # below the size it competes at
    slower = dataclasses.replace(figures, measured={**figures.measured, "torch.compile fp32": 9.0})
    assert engine.weigh_compile(slower, math.inf).backend == "onnx"

    # a cached choice that favours it: the detector runs the compiled forward, same scores
    store = Path(engine.cache_dir()) / "engines.json"
    entries = json.loads(store.read_text())
    (entry,) = [e for e in entries.values() if e["about"]["batch_size"] == 4]
    entry["measured"]["torch.compile fp32"], entry["compile_s"] = 1e-6, 1e-3
    store.write_text(json.dumps(entries))
    detector = load_detector(str(checkpoint), precision="fp32", batch_size=4, images=1e9)
    assert (
        detector.engine.backend == "compile" and detector.info()["engine"]["backend"] == "compile"
    )
    images = _images(7)  # a compiled batch of 4, then 3 padded to 4
    reference = Detector.from_pretrained(checkpoint, precision="fp32").predict_proba(images)
    np.testing.assert_allclose(detector.predict_proba(images), reference, atol=engine.PARITY)


def test_a_compile_that_fails_is_a_reason_not_an_error(checkpoint, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(engine, "COMPILE_MIN_IMAGES", 1)
    monkeypatch.setattr("miragedet.inference.compiled.measure", no_compiler)
    choice = engine.choose(checkpoint, batch_size=2, precision="fp32", images=1e9)
    assert choice.backend in ("torch", "onnx") and "torch.compile fp32" not in choice.measured
    assert "torch.compile failed (RuntimeError: no C++ compiler found)" in choice.compile_note
    again = engine.choose(checkpoint, batch_size=2, precision="fp32", images=1e9)
    assert again.cached and again.compile_note == choice.compile_note  # not tried again


def test_torch_compile_competes_without_onnxruntime_and_after_a_failed_export(
    checkpoint, monkeypatch
):
    """Where ONNX Runtime is out (not installed, or the export failed), a large job still races
    PyTorch against torch.compile, the reason naming what is missing. (The compiled forward is
    stood in for by the eager one here: the real compile is tested above.)"""
    from miragedet.inference import compiled

    def eager_stand_in(model, check, expected, pixels):
        forward = compiled.CompiledForward(model, len(pixels))
        forward._compiled = model
        return compiled.CompiledFigures(forward, 0.5, 0.0)

    monkeypatch.setattr(engine, "COMPILE_MIN_IMAGES", 100)
    monkeypatch.setattr(compiled, "measure", eager_stand_in)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert engine.choose(checkpoint, precision="fp32", images=10).reason.startswith(
        "onnxruntime is not installed"
    )
    large = engine.choose(checkpoint, batch_size=2, precision="fp32", images=1e9)
    assert set(large.measured) == {"torch fp32", "torch.compile fp32"}
    assert "onnxruntime is not installed" in large.reason and large.compile_s == 0.5
    monkeypatch.delitem(sys.modules, "onnxruntime")

    def broken(*args, **kwargs):
        raise RuntimeError("an operator ONNX cannot express")

    monkeypatch.setattr("miragedet.inference.onnx.export_checkpoint", broken)
    small = engine.choose(checkpoint, batch_size=3, precision="fp32", images=10)
    assert small.reason.startswith("the ONNX export failed") and not small.compile_tried
    again = engine.choose(checkpoint, batch_size=3, precision="fp32", images=1e9)
    assert set(again.measured) == {"torch fp32", "torch.compile fp32"}  # measured again, once
    assert "the ONNX export failed" in again.reason


def test_evaluate_on_a_gpu_never_exports_or_times_a_cpu_engine(checkpoint, monkeypatch):
    """evaluate places its model with the auto rule: a model on a GPU never has a CPU engine
    exported or timed (the bug: it exported and timed ONNX Runtime beside an idle GPU). A small
    job stays on PyTorch with nothing measured; a large one races on that GPU only, ONNX
    Runtime only where its CUDA provider is installed (stand-ins here: no GPU)."""
    from types import SimpleNamespace

    from miragedet.inference.engine_model import place

    def never(*args, **kwargs):
        raise AssertionError("a CPU engine was exported or timed for a GPU job")

    monkeypatch.setattr("miragedet.inference.onnx.export_checkpoint", never)
    monkeypatch.setattr(engine, "_measure", never)
    monkeypatch.setattr(
        engine, "gpu_providers", lambda index=0: []
    )  # onnxruntime (CPU) is installed
    on_gpu = SimpleNamespace(
        clip=SimpleNamespace(logit_scale=SimpleNamespace(device=torch.device("cuda")))
    )
    placed = place(on_gpu, checkpoint, "auto", "bf16", images=10)
    assert placed.backend == "torch" and "GPU" in placed.reason
    assert "nothing to race" in placed.reason and "onnxruntime-gpu" in placed.reason
    assert engine.choose(checkpoint, device="cuda:0").backend == "torch"
    assert "int8 is a CPU path" in engine.choose(checkpoint, device="cuda", precision="int8").reason

    raced = []

    def on_the_gpu(directory, view, batch_size, precision, notify, measure_batch, with_compile,
                   no_onnx, gpu=None, providers=None):  # fmt: skip
        raced.append((gpu, providers, with_compile, no_onnx))
        return engine.EngineChoice("torch", "raced (stand-in)", device=str(gpu))

    monkeypatch.setattr(engine, "_measure", on_the_gpu)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU (stand-in)")
    placed = place(on_gpu, checkpoint, "auto", "bf16", images=10**6)
    assert placed.backend == "torch" and raced[-1][0] == torch.device("cuda", 0)
    assert raced[-1][1:] == ([], True, "onnxruntime-gpu is not installed")
    indices = []
    monkeypatch.setattr(engine, "gpu_providers",
                        lambda index=0: indices.append(index) or [engine.GPU_PROVIDER])  # fmt: skip
    engine.choose(checkpoint, device="cuda:1", images=10)  # ONNX Runtime: raced, on that GPU
    assert raced[-1][0] == torch.device("cuda", 1) and indices == [1]
    assert raced[-1][1:] == ([engine.GPU_PROVIDER], False, None)
    told = len(raced)
    engine.choose(checkpoint, device="cuda:1", images=10)
    assert len(raced) == told  # measured once per GPU, then cached under its own key
    bf16 = engine.choose(checkpoint, device="cuda", precision="bf16", images=10)
    assert len(raced) == told and "--precision bf16 runs on PyTorch only" in bf16.reason
    assert engine.scoring_gpu("mps") is None and engine.scoring_gpu("cpu") is None
    assert engine.cache_key(checkpoint, None, 32, "bf16", torch.device("cuda", 0)) != (
        engine.cache_key(checkpoint, None, 32, "bf16")
    )


def test_a_gpu_race_runs_onnx_runtime_on_the_providers_it_was_measured_with(
    checkpoint, monkeypatch
):
    """The race's ONNX Runtime runs on the providers given (on a GPU: the CUDA one), and a
    choice measured on a GPU loads its graph on them again (the CPU provider stands in here)."""
    choice = engine._measure(checkpoint, None, 2, "fp32", None, 2,
                             providers=["CPUExecutionProvider"])  # fmt: skip
    assert "onnx fp32" in choice.measured and choice.device == "cpu"
    seen = []
    monkeypatch.setattr(
        engine, "gpu_providers", lambda index=0: seen.append(index) or ["CPUExecutionProvider"]
    )
    graph, kept = engine.graph_on_choice(
        checkpoint, engine.EngineChoice("onnx", "raced", device="cuda:0"), None, "fp32"
    )
    assert seen and kept.backend == "onnx"
    assert graph.session.get_providers() == ["CPUExecutionProvider"] and seen == [0]
    assert graph.device.type == "cpu"  # where its provider runs: a Detector scores there
    graph, _ = engine.graph_on_choice(
        checkpoint, engine.EngineChoice("onnx", "raced"), None, "fp32"
    )
    assert len(seen) == 1  # a CPU choice never asks for the GPU's providers


def test_load_detector_races_at_the_device_default_batch_when_none_is_given(
    checkpoint, monkeypatch
):
    """Without a batch size, load_detector leaves the race's batch to choose's device default
    (32 on a CPU, GPU_RACE_BATCH on a GPU) instead of racing a GPU at the CPU's 32."""
    from miragedet.inference.detector import load_detector

    asked = []

    def record(directory, **options):
        asked.append(options["batch_size"])
        raise LookupError("stop here")

    monkeypatch.setattr(engine, "choose", record)
    for batch in (None, 12):
        with pytest.raises(LookupError):
            load_detector(str(checkpoint), "auto", batch_size=batch)
    assert asked == [None, 12]


def test_backend_onnx_on_a_gpu_runs_on_its_cuda_provider_or_says_why_not(checkpoint, monkeypatch):
    """--backend onnx on a GPU: ONNX Runtime's CUDA provider on that GPU; without onnxruntime-
    gpu, a clear error when the GPU was named, else the CPU with a note (never silently). Off a
    GPU: the CPU provider, as before. Stand-ins: no GPU here."""
    from miragedet.inference.detector import load_detector

    assert engine.onnx_providers(None, None, strict=True) is None
    assert engine.onnx_providers("cpu", None, strict=True) is None
    monkeypatch.setattr(engine, "gpu_providers", lambda index=0: [])
    notes = []
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        engine.onnx_providers("cuda:1", notes.append, strict=True)
    assert engine.onnx_providers("cuda:1", notes.append, strict=False) is None
    assert len(notes) == 1 and "runs on the CPU beside the GPU" in notes[0]
    with pytest.raises(ValueError, match="--backend onnx on cuda"):
        load_detector(str(checkpoint), "onnx", device="cuda")
    from types import SimpleNamespace

    from miragedet.inference.engine_model import place
    from miragedet.inference.pipeline import ONNX_GPU_BATCH, default_batch_size

    cuda = torch.device("cuda")
    on_gpu = SimpleNamespace(clip=SimpleNamespace(logit_scale=SimpleNamespace(device=cuda)))
    with pytest.raises(ValueError, match="onnxruntime-gpu"):  # evaluate --device cuda
        place(on_gpu, checkpoint, "onnx", "fp32", device_named=True)
    graph = SimpleNamespace(device=cuda, model=SimpleNamespace(engine="onnx"))
    assert default_batch_size(graph, None)[0] == ONNX_GPU_BATCH  # not PyTorch's memory to measure
    monkeypatch.setattr(engine, "gpu_providers",
                        lambda index=0: [(engine.GPU_PROVIDER, {"device_id": index})])  # fmt: skip
    assert engine.onnx_providers("cuda:1", None, strict=True)[0][1] == {"device_id": 1}
