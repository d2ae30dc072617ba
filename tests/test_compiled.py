"""torch.compile as an engine (inference/compiled.py): one compiled batch shape, smaller batches
padded up to it or run eagerly, larger ones split; the scores are the eager model's."""

from __future__ import annotations

import threading

import numpy as np
import torch

from miragedet import MiraGe, ModelConfig
from miragedet.inference.compiled import CompiledForward
from miragedet.model.backbone import load_backbone


def test_one_compiled_shape_serves_every_batch_size_with_the_eager_scores():
    torch.manual_seed(1)
    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2)).eval()
    forward = CompiledForward(model, 4)
    compiled, shapes = forward._compiled, []
    forward._compiled = lambda x: (shapes.append(tuple(x.shape)), compiled(x))[1]
    size = model.backbone.preprocess.image_size
    pixels = torch.randn(11, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(pixels)
        out = forward(pixels)  # split 4 + 4 + 3, the 3 padded to 4
        assert [s[0] for s in shapes] == [4, 4, 4]
        np.testing.assert_allclose(out.probs.numpy(), expected.probs.numpy(), atol=1e-5)
        assert out.image_embeds.shape == expected.image_embeds.shape
        assert out.text_embeds.shape == expected.text_embeds.shape  # per class: not sliced
        shapes.clear()
        lone = forward(pixels[:1])  # under half the compiled batch: eager, nothing padded
        assert shapes == []
        np.testing.assert_allclose(lone.probs.numpy(), expected.probs[:1].numpy(), atol=1e-5)
    assert forward.backbone is model.backbone and forward.classes == model.classes


def test_a_server_on_torch_compile_compiles_before_it_is_ready(tmp_path):
    """serve: the compile (tens of seconds) happens before /readyz says ready, not on the first
    request; the compiled call is recorded (and answered eagerly, to keep the test short)."""
    import asyncio

    from conftest import in_process
    from miragedet import save_pretrained
    from miragedet.apps.server import ServerSettings, create_app
    from miragedet.inference.detector import load_detector

    torch.manual_seed(1)
    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    save_pretrained(model, tmp_path / "ckpt")
    calls: list[int] = []

    def loader():
        detector = load_detector(str(tmp_path / "ckpt"), "compile", batch_size=8)
        eager = detector.model._model
        detector.model._compiled = lambda x: (calls.append(len(x)), eager(x))[1]
        return detector

    async def ready() -> list[int]:
        settings = ServerSettings(model=str(tmp_path / "ckpt"), batch_size=8)
        async with in_process(create_app(settings, load_detector=loader)) as client:
            seen = list(calls)  # when ready
            info = (await client.get("/v1/model")).json()
            assert info["engine"]["backend"] == "compile"
            return seen

    assert asyncio.run(ready()) == [8]  # one compiled call, at the server's batch size


def test_cuda_graph_outputs_are_copied_out_before_the_next_replay():
    """On a GPU the compiled forward is replayed as a CUDA graph, whose outputs live in buffers
    the next replay overwrites: a batch split in parts must keep each part's own scores. The
    replay is stood in for (no GPU here) by a forward writing into fixed buffers."""
    import dataclasses

    from miragedet.inference.compiled import GPU_MODE, mode_for

    assert mode_for("cpu") is None and mode_for("cuda:0") == GPU_MODE
    torch.manual_seed(1)
    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2)).eval()
    forward = CompiledForward(model, 4, GPU_MODE)
    buffers: dict = {}

    threads = set()

    def replay(x):
        threads.add(threading.current_thread().name)
        assert torch.is_inference_mode_enabled()  # the caller's mode, carried to its thread
        out = model(x)
        fixed = {}
        for name in ("logits", "image_embeds"):
            fixed[name] = buffers.setdefault(name, torch.empty_like(getattr(out, name)))
            fixed[name].copy_(getattr(out, name))
        return dataclasses.replace(out, **fixed)

    forward._compiled = replay
    size = model.backbone.preprocess.image_size
    pixels = torch.randn(11, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(pixels)
        out = forward(pixels)  # 4 + 4 + 3 (padded): three replays into the same buffers
        np.testing.assert_allclose(out.probs.numpy(), expected.probs.numpy(), atol=1e-5)
        np.testing.assert_allclose(
            out.image_embeds.numpy(), expected.image_embeds.numpy(), atol=1e-5
        )
        whole = forward(pixels[:4])
        forward(pixels[4:8])  # the next replay must not change what the last one returned
        np.testing.assert_allclose(whole.probs.numpy(), expected.probs[:4].numpy(), atol=1e-5)

    def elsewhere():  # e.g. a server's video request: recorded graphs are per thread
        with torch.inference_mode():
            forward(pixels[:4])

    other = threading.Thread(target=elsewhere)
    other.start()
    other.join()
    assert len(threads) == 1 and threads.pop().startswith("miragedet-graphs")
