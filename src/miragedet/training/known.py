"""The feature memory a trained checkpoint keeps of images it knows (its held-out images when a
validation split exists, else a sample of its training images), so that ``adapt`` guards what
the model knows without ``--old-data`` (docs/adapt.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .adapt import (
    MEMORY_NAME,
    AdaptConfig,
    AdaptError,
    Memory,
    check_roles,
    features_of,
    source_of,
    split_known,
)

#: Known images kept per source (real, and each generator), as adapt keeps (AdaptConfig.memory).
PER_SOURCE = AdaptConfig.memory


def known_memory(model: Any, image_set: Any, batch_size: int, seed: int) -> Memory | None:
    """The memory of up to :data:`PER_SOURCE` images per source of ``image_set``, made by
    ``model`` as it is now (its mode restored), or None when the set cannot be one (class 0 not
    a real class, nothing readable)."""
    try:
        check_roles(image_set, "the training data")
    except AdaptError:
        return None
    pool, _ = split_known(image_set.samples, image_set, PER_SOURCE, 0, seed)
    training = model.training
    try:
        features, kept, _ = features_of(model, pool, batch_size)
    finally:
        model.train(training)
    if not kept:
        return None
    empty = torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    memory = Memory(*empty, ["real"], model.backbone.fingerprint["weights"])
    return memory.add(features, [source_of(pool[i], image_set) for i in kept])


def write_known_memory(
    model: Any, image_set: Any, directory: Path, batch_size: int, seed: int
) -> Memory | None:
    """:func:`known_memory` saved beside the checkpoint in ``directory`` (where adapt reads it;
    written whole or not at all)."""
    memory = known_memory(model, image_set, batch_size, seed)
    if memory is not None:
        staging = Path(directory) / f".{MEMORY_NAME}.tmp"
        memory.save(staging)
        os.replace(staging, Path(directory) / MEMORY_NAME)
    return memory


def keep_memories(
    model: Any, image_set: Any, output: Path, batch_size: int, seed: int, device: Any
) -> None:
    """At the end of a training run: the memory beside its ``last`` checkpoint (made by
    ``model``, which it holds) and its ``best`` one (made by the best weights, loaded)."""
    from ..model.checkpoint import CONFIG_NAME
    from ..model.mirage import load_pretrained

    for name in ("last", "best"):
        directory = Path(output) / name
        if (directory / CONFIG_NAME).is_file():
            made_by = model if name == "last" else load_pretrained(directory, device=device)
            write_known_memory(made_by, image_set, directory, batch_size, seed)
