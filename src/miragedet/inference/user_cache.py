"""Where miragedet keeps what it computes once per machine: the engine choices and the ONNX
graphs of read-only checkpoints."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MIRAGEDET_CACHE``, else ``$XDG_CACHE_HOME/miragedet``, else ``~/.cache/miragedet``."""
    if os.environ.get("MIRAGEDET_CACHE"):
        return Path(os.environ["MIRAGEDET_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "miragedet"


def ours_to_write(directory: Path) -> bool:
    """Whether a checkpoint folder may take what we derive from it (its ONNX graphs): writable,
    and not a snapshot in the Hugging Face cache (a downloaded repository is the hub's; its files
    there are links to blobs). Otherwise it goes under :func:`cache_dir`."""
    if not os.access(directory, os.W_OK):
        return False
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return Path(HF_HUB_CACHE).resolve() not in Path(directory).resolve().parents
    except ImportError:
        return True
