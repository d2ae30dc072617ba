"""What a server is started with: how its detector scores (the DetectorConfig fields, the same as
detect's options) and what belongs to the server alone (the model, batching, limits, keys)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...inference.detector_config import DetectorConfig


@dataclass
class ServerSettings(DetectorConfig):
    """The detector's settings (:class:`~miragedet.inference.detector_config.DetectorConfig`:
    threshold, batch size, device, precision, backend, view, frames, provenance, trust anchors,
    watermarks, threads, exact decode; stability is asked per request) and the server's own."""

    model: str = ""
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
    retry_after_s: int = 1
    max_tiles_limit: int = 64  # the most tiles a request may ask for per image (?max_tiles=)
    max_video_mb: float = 64.0  # one video upload at most (images: max_body_mb)
    max_video_seconds: float = 600.0  # longer clips are refused (413)

    def __post_init__(self) -> None:
        # the trusted signers are read once, at start-up: a missing file fails here
        self.trust_anchors = self.trust_anchor_pem()

    def detector_config(self) -> DetectorConfig:
        """The detector's part of these settings."""
        from dataclasses import fields

        return DetectorConfig(**{f.name: getattr(self, f.name) for f in fields(DetectorConfig)})
