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
