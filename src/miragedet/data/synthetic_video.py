"""Synthetic clips with a known fingerprint in space or in time, written losslessly with PyAV.

- ``real``: a smooth random colour field panning slowly across the frame (a camera move), its
  brightness set per clip.
- ``fake``: the same with a generator fingerprint (:mod:`miragedet.data.synthetic`) in every
  frame.
- ``span``: the fingerprint only in a span of frames (by default 40-60 of 100: a generated
  insert in real footage).
- ``temporal``: every frame alone is like a real one (no fingerprint, brightness within the
  reals' range), but the brightness alternates up and down from frame to frame (a flicker):
  only a model that sees frames in order can tell (``train --temporal``).

Clips are FFV1 in Matroska (``.mkv``, RGB: bit-exact) or H.264 at qp 0 in MP4
(``.mp4``; lossless in YUV 4:2:0, so colour is subsampled as in any H.264 file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .synthetic import SEEN, Fingerprint

KINDS = ("real", "fake", "span", "temporal")


@dataclass(frozen=True)
class VideoSpec:
    """The kind of clip and its shape."""

    kind: str = "real"
    frames: int = 16
    size: int = 32
    fps: float = 8.0
    fingerprint: Fingerprint = SEEN
    #: ``span`` clips: the frames [start, stop) that carry the fingerprint.
    span: tuple[int, int] | None = None
    #: ``temporal`` clips: the flicker's amplitude in grey levels (+ on even frames, - on odd).
    flicker: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"clip kind must be one of {', '.join(KINDS)}, not {self.kind!r}")


def make_frames(rng: np.random.Generator, spec: VideoSpec) -> list[np.ndarray]:
    """The clip's frames, uint8 (size, size, 3)."""
    size, n = spec.size, spec.frames
    canvas = 2 * size
    coarse = rng.uniform(30, 225, size=(rng.integers(2, 6), rng.integers(2, 6), 3))
    field = Image.fromarray(coarse.astype(np.uint8)).resize((canvas, canvas),
                                                           Image.Resampling.BICUBIC)  # fmt: skip
    scene = np.asarray(field, dtype=np.float64) + rng.uniform(-20, 20)  # brightness per clip
    dx, dy = rng.uniform(-1, 1, size=2) * size / max(n, 1) * 0.9  # at most 0.9 frame overall
    x0, y0 = size / 2 - dx * n / 2, size / 2 - dy * n / 2
    span = spec.span or (0, n)
    frames = []
    for i in range(n):
        x, y = round(x0 + dx * i), round(y0 + dy * i)
        pixels = scene[y : y + size, x : x + size].copy()
        if spec.kind == "fake" or (spec.kind == "span" and span[0] <= i < span[1]):
            pixels += spec.fingerprint.rgb(size, size)
        if spec.kind == "temporal":
            pixels += spec.flicker if i % 2 == 0 else -spec.flicker
        frames.append(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    return frames


def write_video(path: str | Path, frames: list[np.ndarray], fps: float = 8.0) -> Path:
    """Write ``frames`` (uint8 HxWx3) losslessly: FFV1 for ``.mkv``/``.avi``, H.264 qp 0 for
    ``.mp4``/``.mov``, VP9 lossless for ``.webm``; animated WebP/GIF through Pillow."""
    from fractions import Fraction

    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".webp", ".gif"):
        images = [Image.fromarray(f) for f in frames]
        extra = {"lossless": True} if suffix == ".webp" else {}
        images[0].save(path, save_all=True, append_images=images[1:],
                       duration=round(1000 / fps), loop=0, **extra)  # fmt: skip
        return path
    codec, pix_fmt, options = {
        ".mkv": ("ffv1", "bgr0", {}),
        ".avi": ("ffv1", "bgr0", {}),
        ".mp4": ("libx264", "yuv444p", {"qp": "0"}),
        ".mov": ("libx264", "yuv444p", {"qp": "0"}),
        ".webm": ("libvpx-vp9", "yuv444p", {"lossless": "1"}),
    }.get(suffix, (None, None, None))
    if codec is None:
        raise ValueError(f"no writer for {suffix or 'a name without extension'}")
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options
        for array in frames:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_video_set(
    root: str | Path,
    n_per_class: int = 16,
    fake_kind: str = "fake",
    frames: int = 16,
    size: int = 32,
    fps: float = 8.0,
    suffix: str = ".mkv",
    seed: int = 0,
    fingerprint: Fingerprint = SEEN,
    span: tuple[int, int] | None = None,
) -> Path:
    """``root/{0_real,1_fake}/NNNNN<suffix>``: ``n_per_class`` real clips and as many of
    ``fake_kind`` (fake, span or temporal)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n_per_class):
        for label, kind in ((0, "real"), (1, fake_kind)):
            spec = VideoSpec(kind, frames, size, fps, fingerprint, span)
            folder = root / ("0_real", "1_fake")[label]
            write_video(folder / f"{i:05d}{suffix}", make_frames(rng, spec), fps)
    return root
