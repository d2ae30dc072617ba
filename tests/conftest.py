"""Shared fixtures: tiny random CLIPs (built in memory) and the real CLIP tokenizer files."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from miragedet.backbone import Backbone, load_backbone

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
