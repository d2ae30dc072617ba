"""Frozen image features computed once and kept beside a run (linear probe, zero-shot, CoOp).

When nothing that trains changes the image embeddings (no vision prompts, no unfrozen vision
block: :attr:`MiraGe.image_features_frozen`) and the training images are not randomly augmented,
every epoch would push the same pixels through the same frozen tower. The features are computed in
one pass instead, saved as safetensors under ``OUTPUT/features/`` and reused by later epochs, by
``--resume`` and by any rerun on the same files. MiraGe itself, and the multimodal and
discriminative variants, cannot use this: their vision prompts change the features every step.

The cache key covers the backbone (source and shape), the preprocessing, the precision the tower
runs in (``--amp``), the format alignment and every file's path, size and modification time, so a
changed image or setting computes anew.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def cache_key(samples: list[Any], **settings: Any) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for sample in samples:
        try:
            stat = os.stat(sample.path)
            frame = getattr(sample, "frame", None)  # frames of one clip are distinct inputs
            at = f"@{frame}" if frame is not None else ""
            digest.update(f"{sample.path}{at}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{sample.path}\0missing\n".encode())
    return digest.hexdigest()[:24]


def cache_path(
    folder: str | os.PathLike, name: str, samples: list[Any], backbone: Any, **settings: Any
) -> Path:
    """``folder/NAME-KEY.safetensors`` for these samples' features from ``backbone`` (its source,
    shape and preprocessing; ``settings`` may name another preprocessing) under ``settings``
    (precision, alignment, ...)."""
    identity = {
        "backbone": backbone.source,
        "shape": backbone.describe(),
        "preprocess": backbone.preprocess.to_dict(),
    }
    key = cache_key(samples, **{**identity, **settings})
    return Path(folder) / f"{name}-{key}.safetensors"


def load_or_compute(
    path: Path,
    batches: Callable[[], Any],
    encode: Callable[[torch.Tensor], torch.Tensor],
    n: int,
) -> tuple[torch.Tensor, dict[int, str], int]:
    """(features (n, D) float32, {index: error} of unreadable samples, how many were computed).

    ``batches()`` yields collated batches (``pixel_values``, ``indices``, ``errors``) over all n
    samples; ``encode`` maps pixels to embeddings. A cache file at ``path`` is read instead when
    present; a new one is written atomically."""
    if path.is_file():
        tensors = load_file(str(path))
        with open(path, "rb") as handle:  # the errors ride in the safetensors header metadata
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        errors = {int(k): v for k, v in json.loads(header["__metadata__"]["errors"]).items()}
        return tensors["features"], errors, 0
    features: torch.Tensor | None = None
    errors: dict[int, str] = {}
    computed = 0
    with torch.no_grad():
        for batch in batches():
            for index, error in batch["errors"]:
                errors[int(index)] = error
            if not len(batch["indices"]):
                continue
            embeds = encode(batch["pixel_values"]).float().cpu()
            if features is None:
                features = torch.zeros(n, embeds.shape[1])
            features[batch["indices"]] = embeds
            computed += len(batch["indices"])
    features = features if features is not None else torch.zeros(n, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(
        {"features": features.contiguous()}, str(tmp), metadata={"errors": json.dumps(errors)}
    )
    os.replace(tmp, path)
    return features, errors, computed
