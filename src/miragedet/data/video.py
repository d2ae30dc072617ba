"""Video clips as sampled frames: MP4/MOV/M4V, Matroska/WebM and AVI through PyAV (FFmpeg's
libraries in its wheel), animated WebP, GIF and APNG through Pillow's frame sequence.

Frames are sampled evenly across the clip (``frames``, default 16) or at ``fps``, by seeking to
each needed position (FFmpeg lands on the keyframe before it; we decode forward from there)
instead of decoding every frame: a 10-minute clip costs about as many decoded frames as a
10-second one. Times are each frame's presentation timestamp, so variable frame rate clips are
sampled by time, not by frame count. The display rotation a phone records (the display matrix;
PyAV's ``VideoFrame.rotation``, counter-clockwise degrees, https://pyav.basswood-io.com/docs/
stable/api/video.html) is applied, as players do.

Guards, each giving an :class:`~miragedet.data.formats.ImageDecodeError` with its reason (the
caller turns it into an error row): a frame size over ``max_pixels``; no decodable frame
(truncated file, zero frames); a decode budget in frames (bounded work, whatever a hostile file
declares) and a wall-clock limit per clip. A declared duration longer than the frames really
present (a forged header) is noticed when the frames end, and the samples are re-planned over
the frames that exist.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from . import formats
from .formats import ImageDecodeError

#: Frames per clip by default: the 16-frame clips of the video detectors we follow (DeMamba and
#: AIGVDet score 8-16 frame windows; GenVideo's clips are 2-6 s), enough for a timeline.
DEFAULT_FRAMES = 16
#: A frame larger than this is refused (8K UHD is 33.2 MP).
MAX_FRAME_PIXELS = 40_000_000
#: Animated images: frames whose delay is missing or zero are shown for this long by browsers.
DEFAULT_DELAY_MS = 100
#: Samples at least this far apart (seconds) take the keyframe before their time (``seek``).
#: x264's default keyframe interval is 250 frames (10 s at 25 fps); phones write one every 1-2 s.
KEYFRAME_SPACING = 10.0


@dataclass(frozen=True)
class Sampling:
    """Which frames of a clip are scored, and the guards on decoding it."""

    frames: int = DEFAULT_FRAMES
    #: Sample at this rate instead (frames per second of the clip), up to ``max_frames``.
    fps: float | None = None
    #: Only the first this many seconds of a clip are sampled (None: all of it).
    max_seconds: float | None = None
    max_frames: int = 256
    max_pixels: int = MAX_FRAME_PIXELS
    #: Wall-clock limit for decoding one clip (a guard against pathological files).
    decode_seconds: float = 60.0
    #: Decoded frames allowed per sampled frame (seeking decodes from the keyframe before a
    #: position: x264's default keyframe interval is 250 frames).
    decode_per_frame: int = 300
    #: ``auto``: when samples are at least :data:`KEYFRAME_SPACING` seconds apart (a long clip),
    #: each is the keyframe at or before its time (at most one keyframe interval early; the time
    #: reported is the frame's own), sparing the decode of up to a keyframe interval of frames
    #: per sample; ``exact``: always the frame shown at the time.
    seek: str = "auto"
    #: Convert frames larger than this (short side) to RGB at this short side, in FFmpeg's
    #: scaler (area averaging), as JPEG draft decoding does for stills; None: full size. The
    #: Detector sets it for the resize view only (docs/video.md: speed and score tolerance).
    draft_size: int | None = None

    def __post_init__(self) -> None:
        if self.frames < 1 or self.max_frames < 1:
            raise ValueError("frames must be at least 1")
        if self.fps is not None and not self.fps > 0:
            raise ValueError("fps must be > 0")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError("max seconds must be > 0")
        if self.seek not in ("auto", "exact"):
            raise ValueError("seek must be auto or exact")


@dataclass
class Video:
    """The sampled frames of one clip (RGB, rotation applied) and what is known about it."""

    frames: list[Image.Image]
    times: list[float]  # seconds from the clip's start, one per frame
    duration: float | None
    width: int
    height: int
    decoder: str  # e.g. "PyAV h264", "Pillow WEBP"
    container: str
    fps: float | None = None
    rotation: int = 0
    total_frames: int | None = None
    notes: list[str] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """The clip's description as reported next to its score (JSON-ready)."""
        return {
            "frames_scored": len(self.frames),
            "duration": None if self.duration is None else round(self.duration, 3),
            "width": self.width,
            "height": self.height,
            "fps": None if self.fps is None else round(self.fps, 3),
            "rotation": self.rotation,
            "decoder": self.decoder,
            "container": self.container,
            "total_frames": self.total_frames,
            "notes": self.notes,
        }


def video_kind(source: Any) -> str | None:
    """ "video" (a container FFmpeg reads), "animation" (an animated WebP, GIF or APNG) or None
    (a still image, or not a file we know) for a path or bytes."""
    if not isinstance(source, str | os.PathLike | bytes | bytearray):
        return None
    try:
        head = formats.read_head(source)
    except OSError:
        return None
    kind = formats.sniff(head)
    if kind == "VIDEO":
        return "video"
    if kind in ("GIF", "WEBP", "PNG"):
        return "animation" if _frame_count(source) > 1 else None
    return None


def _frame_count(source: Any) -> int:
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with Image.open(stream) as image:
            return int(getattr(image, "n_frames", 1))
    except Exception:  # not readable as an image: the image decoder reports why
        return 1


def plan(duration: float, sampling: Sampling) -> list[float]:
    """The times (seconds) to sample in a clip of ``duration``: ``frames`` evenly spaced, each in
    the middle of its share of the clip, or one every 1/``fps`` seconds (at most
    ``max_frames``, then evenly thinned)."""
    if isinstance(sampling, _AtTime):
        return [min(sampling.at, max(duration, 0.0))]
    if sampling.max_seconds is not None:
        duration = min(duration, sampling.max_seconds)
    duration = max(duration, 0.0)
    if sampling.fps is not None:
        n = max(1, math.floor(duration * sampling.fps + 1e-9))
        times = [i / sampling.fps for i in range(n)]
        if len(times) > sampling.max_frames:
            picks = np.linspace(0, len(times) - 1, sampling.max_frames).round().astype(int)
            times = [times[i] for i in sorted(set(picks.tolist()))]
        return times
    n = sampling.frames
    return [duration * (i + 0.5) / n for i in range(n)]


def read_video(source: Any, sampling: Sampling | None = None) -> Video:
    """The sampled frames of a video or animated image (path or bytes); raises
    :class:`ImageDecodeError` with the reason when there is nothing to score."""
    sampling = sampling or Sampling()
    kind = video_kind(source)
    if kind is None:
        if isinstance(source, str | os.PathLike) and not os.path.exists(source):
            raise ImageDecodeError(f"file not found: {source}", "missing")
        raise ImageDecodeError("not a video or animated image", "format")
    if kind == "animation":
        return _read_animation(source, sampling)
    return _read_container(source, sampling)


def is_video_file(source: Any) -> bool:
    """Whether a path or bytes is a video container (by content; cheap: the first bytes only).
    Animated images are not counted: data sets treat them as stills (their first frame)."""
    if not isinstance(source, str | os.PathLike | bytes | bytearray):
        return False
    try:
        return formats.sniff(formats.read_head(source)) == "VIDEO"
    except OSError:
        return False


def frame_times(source: Any, frames: int) -> list[float] | None:
    """The times :func:`read_video` would sample ``frames`` frames at (None: unreadable)."""
    import av

    try:
        with av.open(os.fspath(source) if not isinstance(source, bytes | bytearray)
                     else io.BytesIO(bytes(source))) as container:  # fmt: skip
            stream = container.streams.video[0]
            base = float(stream.time_base or 1e-6)
            if stream.duration:
                duration = float(stream.duration * base)
            elif container.duration:
                duration = container.duration / 1_000_000
            else:
                return None
    except Exception:
        return None
    return plan(duration, Sampling(frames=frames))


def read_frame(source: Any, t: float, max_pixels: int = MAX_FRAME_PIXELS) -> Image.Image:
    """The frame of a video shown at ``t`` seconds (RGB, rotation applied)."""
    clip = read_video(source, _AtTime(t, max_pixels))
    return clip.frames[0]


@dataclass(frozen=True)
class _AtTime(Sampling):
    """A sampling of exactly one time (a data set's frame sample)."""

    at: float = 0.0

    def __init__(self, at: float, max_pixels: int) -> None:
        super().__init__(frames=1, max_pixels=max_pixels)
        object.__setattr__(self, "at", at)


# -- Pillow: animated WebP, GIF, APNG -------------------------------------------------------------


def _read_animation(source: Any, sampling: Sampling) -> Video:
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with Image.open(stream) as image:
            fmt = image.format or "image"
            width, height = image.size
            if width * height > sampling.max_pixels:
                raise ImageDecodeError(
                    f"frames too large: {width}x{height} (limit {sampling.max_pixels} pixels)",
                    "size",
                )
            count = int(getattr(image, "n_frames", 1))
            starts, total = [], 0.0
            for index in range(count):  # frame delays, read without decoding pixels
                image.seek(index)
                starts.append(total)
                delay = image.info.get("duration") or DEFAULT_DELAY_MS
                total += float(delay) / 1000.0
            times = plan(total, sampling)
            wanted = sorted({_frame_at(starts, t) for t in times})
            frames, frame_times = [], []
            for index in wanted:  # forward only: GIF frames build on the previous ones
                image.seek(index)
                frames.append(image.convert("RGB"))
                frame_times.append(starts[index])
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"corrupt or truncated animation: {_reason(exc)}") from exc
    return Video(
        frames, frame_times, total, width, height, f"Pillow {fmt}", fmt,
        fps=count / total if total else None, total_frames=count,
    )  # fmt: skip


def _frame_at(starts: list[float], t: float) -> int:
    """The index of the frame shown at time ``t`` (frames start at ``starts``)."""
    return max(0, int(np.searchsorted(np.asarray(starts), t, side="right")) - 1)


# -- PyAV: MP4/MOV, Matroska/WebM, AVI ------------------------------------------------------------


def _read_container(source: Any, sampling: Sampling) -> Video:
    import av

    deadline = time.monotonic() + sampling.decode_seconds
    is_bytes = isinstance(source, bytes | bytearray)
    opened = io.BytesIO(bytes(source)) if is_bytes else os.fspath(source)
    try:
        container = av.open(opened, options={"probesize": "5000000", "analyzeduration": "5000000"})
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"file not found: {source}", "missing") from exc
    except Exception as exc:
        raise ImageDecodeError(f"not a readable video: {_reason(exc)}", "format") from exc
    try:
        return _decode(container, sampling, deadline)
    except ImageDecodeError:
        raise
    except Exception as exc:  # FFmpeg's errors on damaged files
        raise ImageDecodeError(f"corrupt or truncated video: {_reason(exc)}") from exc
    finally:
        container.close()


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _decode(container: Any, sampling: Sampling, deadline: float) -> Video:
    if not container.streams.video:
        raise ImageDecodeError("the file has no video stream", "format")
    stream = container.streams.video[0]
    context = stream.codec_context
    width, height = int(context.width or 0), int(context.height or 0)
    if width * height > sampling.max_pixels:
        raise ImageDecodeError(
            f"frames too large: {width}x{height} (limit {sampling.max_pixels} pixels)", "size"
        )
    stream.thread_type = "AUTO"
    base = float(stream.time_base) if stream.time_base else 1e-6
    start = float(stream.start_time * base) if stream.start_time is not None else 0.0
    duration = None
    if stream.duration:
        duration = float(stream.duration * base)
    elif container.duration:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    rate = float(stream.average_rate) if stream.average_rate else None
    decoder = f"PyAV {context.name}"
    fmt = container.format.name.split(",")[0]
    notes: list[str] = []
    budget = [sampling.decode_per_frame * (sampling.max_frames + 1)]
    if duration is None or duration <= 0:
        duration = _measure(container, stream, base, start, budget, deadline)
        notes.append("duration not declared: measured from the packets")
    times = plan(duration, sampling)
    budget = [sampling.decode_per_frame * (len(times) + 1)]
    spacing = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
    keyframes = sampling.seek == "auto" and spacing >= KEYFRAME_SPACING
    frames, got, end = _sample(container, stream, base, start, times, budget, deadline, keyframes)
    if end is not None and len(got) < len(set(times)) and end > 0:
        # the frames end before the declared duration: re-plan over what exists (once)
        notes.append(f"declared {duration:.1f} s, frames end at {end:.1f} s")
        duration = end
        times = plan(end, sampling)
        frames, got, _ = _sample(container, stream, base, start, times, budget, deadline, False)
    if not frames:
        raise ImageDecodeError("no decodable video frame (empty or truncated clip)")
    rotation = int(frames[0][1].rotation or 0) if hasattr(frames[0][1], "rotation") else 0
    images = [_rotated(_to_image(f, sampling.draft_size), rotation) for _, f in frames]
    if rotation % 180:
        width, height = height, width
    total = int(stream.frames) or None
    return Video(
        images, [t for t, _ in frames], duration, width, height, decoder, fmt, fps=rate,
        rotation=rotation, total_frames=total, notes=notes,
    )  # fmt: skip


def _to_image(frame: Any, draft_size: int | None) -> Image.Image:
    """The frame in RGB; with ``draft_size``, scaled (area averaging) so that its short side
    is ``draft_size`` when it is larger."""
    short = min(frame.width, frame.height)
    if draft_size is None or short <= draft_size:
        return frame.to_image()
    scale = draft_size / short
    width, height = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
    return frame.reformat(width, height, "rgb24", interpolation="AREA").to_image()


def _rotated(image: Image.Image, rotation: int) -> Image.Image:
    """``image`` as displayed: rotated ``rotation`` degrees counter-clockwise (PyAV's sign)."""
    turns = {90: Image.Transpose.ROTATE_90, -90: Image.Transpose.ROTATE_270,
             270: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180,
             -180: Image.Transpose.ROTATE_180}  # fmt: skip
    out = image.transpose(turns[rotation]) if rotation in turns else image
    return out.convert("RGB")


def _check(budget: list[int], deadline: float) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise ImageDecodeError("decode budget spent: the clip needs far more decoding than its "
                               "frames should (a damaged or hostile file)", "corrupt")  # fmt: skip
    if time.monotonic() > deadline:
        raise ImageDecodeError("decoding took too long (limit per clip reached)", "timeout")


def _frame_time(frame: Any, base: float, start: float) -> float | None:
    if frame.pts is None:
        return None
    return float(frame.pts) * base - start


def _sample(
    container: Any,
    stream: Any,
    base: float,
    start: float,
    times: list[float],
    budget: list[int],
    deadline: float,
    keyframes: bool = False,
) -> tuple[list[tuple[float, Any]], set[int], float | None]:
    """Decode, for each of ``times`` (ascending), the frame shown at that time (the last one
    starting at or before it): seek when the target is more than a second ahead of the decoder,
    else decode forward. With ``keyframes``, the first frame a seek lands on (the keyframe at
    or before the target) is taken. Returns (time, frame) pairs, the indices of the targets
    reached, and the time of the last frame when the stream ended well before the targets
    (else None)."""
    out: list[tuple[float, Any]] = []
    reached: set[int] = set()
    decoder = None
    shown: tuple[float, Any] | None = None  # the last frame starting at or before the target
    ahead: tuple[float, Any] | None = None  # a decoded frame after the target, not yet shown
    ended = False
    spacing = (times[-1] - times[0]) / max(len(times) - 1, 1) if len(times) > 1 else 1.0
    tolerance = max(0.5, 2 * spacing)
    for k, target in enumerate(times):
        latest = ahead or shown
        if decoder is None or (not ended and latest is not None and target - latest[0] > 1.0):
            decoder = _seek(container, stream, base, start, target if k or keyframes else 0.0)
            shown = ahead = None
            if keyframes:
                landed = _first(decoder, base, start, budget, deadline)
                if landed is not None and (not out or landed[0] > out[-1][0]):
                    out.append(landed)
                    reached.add(k)
                    shown = landed
                    continue
        while not ended:
            if ahead is not None:
                if ahead[0] > target + 1e-6:
                    break
                shown, ahead = ahead, None
                continue
            _check(budget, deadline)
            try:
                frame = next(decoder)
            except StopIteration:
                ended = True
                break
            t = _frame_time(frame, base, start)
            if t is None:
                t = (shown[0] + 1e-3) if shown is not None else 0.0
            ahead = (t, frame)
        chosen = shown if shown is not None else ahead  # a seek may land just after the target
        if chosen is None or (ended and ahead is None and target - chosen[0] > tolerance):
            last = chosen[0] if chosen is not None else 0.0
            return _unique(out), reached, last
        out.append(chosen)
        reached.add(k)
    return _unique(out), reached, None


def _first(decoder: Any, base: float, start: float, budget: list[int], deadline: float) -> Any:
    """The first frame of a decoder just after a seek (the keyframe it landed on), or None."""
    _check(budget, deadline)
    try:
        frame = next(decoder)
    except StopIteration:
        return None
    t = _frame_time(frame, base, start)
    return None if t is None else (t, frame)


def _seek(container: Any, stream: Any, base: float, start: float, target: float) -> Any:
    """A decoder positioned at the keyframe at or before ``target`` (from the start for
    containers that cannot seek)."""
    try:
        if target > 0:
            offset = int((target + start) / base)
            container.seek(max(offset, 0), stream=stream, backward=True, any_frame=False)
        else:
            container.seek(0)
    except Exception:  # no index (some AVI): decode forward from wherever we are
        pass
    return container.decode(stream)


def _unique(pairs: list[tuple[float, Any]]) -> list[tuple[float, Any]]:
    """Each decoded frame once (two targets inside one frame's display time pick the same)."""
    seen: set[float] = set()
    out = []
    for t, frame in pairs:
        if t not in seen:
            seen.add(t)
            out.append((t, frame))
    return out


def _measure(
    container: Any, stream: Any, base: float, start: float, budget: list[int], deadline: float
) -> float:
    """The clip's length from its packets' timestamps (demuxing only, no decoding), for
    containers that declare none."""
    last = 0.0
    for packet in container.demux(stream):
        _check(budget, deadline)
        if packet.pts is not None:
            end = float(packet.pts + (packet.duration or 0)) * base - start
            last = max(last, end)
    return last
