"""Shared fixtures: tiny random CLIPs (built in memory) and the real CLIP tokenizer files."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import pytest
import torch

from miragedet import MiraGe, ModelConfig
from miragedet.model.backbone import Backbone, load_backbone

# The suite runs on PyTorch: the default engine (--backend auto) exports and measures each new
# checkpoint once (about 18 s for a tiny one here), which hundreds of throwaway checkpoints would
# pay again and again. test_engine.py unsets this to test the default itself; the engine cache
# goes to a folder of the run, never the user's.
os.environ["MIRAGEDET_BACKEND"] = "torch"
os.environ["MIRAGEDET_CACHE"] = tempfile.mkdtemp(prefix="miragedet-test-cache-")
atexit.register(shutil.rmtree, os.environ["MIRAGEDET_CACHE"], ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
#: ../shared beside the repo holds OpenAI CLIP's real tokenizer in Hugging Face format.
SHARED_TOKENIZER = REPO.parent / "shared" / "clip-tokenizer"


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="prompt depth")
        yield


@pytest.fixture
def tiny() -> Backbone:
    return load_backbone("tiny")


@pytest.fixture
def tiny_asym() -> Backbone:
    return load_backbone("random:tiny-asym")


@pytest.fixture
def shared_tokenizer() -> Path:
    if not (SHARED_TOKENIZER / "vocab.json").is_file():
        pytest.skip("../shared/clip-tokenizer is not beside the repository")
    return SHARED_TOKENIZER


def images_for(backbone: Backbone, n: int = 4, seed: int = 0) -> torch.Tensor:
    """A batch of random preprocessed-looking pixel tensors for ``backbone``."""
    s = backbone.preprocess.image_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


SERVER_KEY = "s3cret"


@pytest.fixture(scope="session")
def served_checkpoint(tmp_path_factory):
    model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
    path = tmp_path_factory.mktemp("server") / "ckpt"
    model.save_pretrained(str(path))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(served_checkpoint):
    """A real `miragedet serve` process on 127.0.0.1 with an API key and small limits."""
    port = _free_port()
    env = {**os.environ, "MIRAGEDET_API_KEY": SERVER_KEY}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "miragedet",
            "serve",
            "-m",
            str(served_checkpoint),
            "--port",
            str(port),
            "--max-body-mb",
            "1",
            "--max-pixels",
            "1000000",
            "--max-wait-ms",
            "300",
            "--max-batch",
            "16",
            "--cors",
            "http://example.org",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600  # a hang guard: readiness, not speed, ends the wait
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read().decode())
        time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("server did not become ready")
    yield base
    proc.terminate()
    proc.wait(timeout=10)


def fit_tiny(backbone: Backbone, pixels, labels, steps: int, method: str = "mirage", model=None):
    """A MiraGe (depth 2; or ``model``) on a tiny CLIP trained on preprocessed tensors with the
    settings the learning tests share (lr 0.02, batch 64, bank 256): (model, per-step history)."""
    from miragedet.training import LossConfig, MiraGeLoss, OptimConfig
    from miragedet.training.step import fit_tensors

    model = model or MiraGe(backbone, ModelConfig.for_method(method, depth=2))
    loss_fn = MiraGeLoss(LossConfig.for_method(method, bank_size=256), dim=64)
    labels = labels if isinstance(labels, torch.Tensor) else torch.tensor(labels)
    history = fit_tensors(
        model, loss_fn, pixels, labels, OptimConfig(lr=0.02, batch_size=64), steps=steps
    )
    return model, history


@contextlib.asynccontextmanager
async def in_process(server_app):
    """An httpx client of a server app run in this process, once its model has loaded."""
    transport = httpx.ASGITransport(app=server_app)
    async with (
        server_app.router.lifespan_context(server_app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        while (await client.get("/readyz")).status_code != 200:  # the model loads
            await asyncio.sleep(0.05)
        yield client


@pytest.fixture(scope="session")
def attribution(tmp_path_factory) -> Path:
    """An attribution model (real, grid-2) trained on a tiny CLIP and adapted to stripes-3 from 16
    shots, with its open-set test calibrated at 2% (docs/adapt.md): its checkpoint directory,
    beside the data it came from and chroma-2 images it has never seen (``unseen``)."""
    from PIL import Image

    from miragedet import save_pretrained
    from miragedet.data.layouts import find_images
    from miragedet.data.synthetic import write_layout
    from miragedet.training.adapt import AdaptConfig, adapt

    root = tmp_path_factory.mktemp("attribution")
    torch.manual_seed(0)  # before any function-scoped fixture: seed it here
    tiny = load_backbone("tiny")
    write_layout(root / "train", "generic", ("grid-2",), n_per_class=600, seed=11)
    write_layout(root / "old", "generic", ("grid-2",), n_per_class=460, seed=12)
    write_layout(root / "new", "generic", ("stripes-3",), n_per_class=216, seed=13)
    write_layout(root / "unseen", "generic", ("chroma-2",), n_per_class=200, seed=14)
    train = find_images(root / "train")
    pixels = tiny.preprocess.batch([Image.open(s.path).convert("RGB") for s in train.samples])
    model = MiraGe(tiny, ModelConfig.for_method("mirage", depth=2, classes=train.classes))
    model, _ = fit_tiny(tiny, pixels, [s.label for s in train.samples], 400, model=model)
    save_pretrained(model, root / "base")
    config = AdaptConfig(old_data=str(root / "old"), split=None, old_split=None, unknown_rate=0.02)
    adapt(root / "base", root / "new", root / "attr", config)
    return root / "attr"
