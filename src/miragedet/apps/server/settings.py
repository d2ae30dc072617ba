"""What a server is started with: the model, the engine, batching, limits, keys and quotas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ServerSettings:
    model: str = ""
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256  # images waiting or being scored
    max_body_mb: float = 32.0
    max_pixels: int = 40_000_000
    max_images: int = 64  # per request
    api_key: str | None = None  # one key (named "default"); --api-keys FILE for several
    api_keys_file: str | None = None  # NAME KEY [RATE] [DAILY_IMAGES] per line (keys.py)
    #: Requests per key (``limits`` notation, e.g. "60/minute"); None: unlimited. Our choice.
    rate_limit: str | None = None
    daily_images: int | None = None  # images per key per day; None: unlimited
    cors_origins: list[str] = field(default_factory=list)
    threshold: float | None = None
    device: str | None = "auto"  # a CUDA GPU when present (model/device.py)
    provenance: bool = True
    trust_anchors: str | None = None  # PEM text of trusted C2PA signers (--trust-anchors)
    watermarks: bool = False  # look for generators' invisible watermarks (--watermarks)
    retry_after_s: int = 1
    #: auto | torch | onnx | compile (inference/engine.py); None: $MIRAGEDET_BACKEND, else auto
    backend: str | None = None
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (network cast once; torch backend)
    #: A View, a kind, or options with an optional kind (views.resolve); None: the checkpoint's
    #: (tiles for one trained on native crops).
    view: Any = None
    max_tiles_limit: int = 64  # the most tiles a request may ask for per image (?max_tiles=)
    max_video_mb: float = 64.0  # one video upload at most (images: max_body_mb)
    max_video_seconds: float = 600.0  # longer clips are refused (413)
    #: Frames scored per clip (None: the detector's, 16 by default); at most 64 per clip.
    frames: int | None = None
