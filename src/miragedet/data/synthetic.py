"""Synthetic real/fake images with a known "generator fingerprint", for tests and the quickstart.

"Real" images are smooth random scenes. "Fake" ones are the same kind of scene plus a faint
pattern locked to the pixel grid, like the periodic traces transposed-convolution upsampling
leaves in GAN and diffusion images. A frozen random CLIP can learn to see such a pattern (see
shared recipes), so these sets check the whole training pipeline offline. Different periods or
amplitudes stand in for different generators, seen or unseen in training.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

#: The colour direction of the ``chroma`` family: adding ``t * CHROMA`` to a pixel changes R and
#: G but not its luma (ITU-R BT.601: Y = 0.299 R + 0.587 G + 0.114 B; 0.299 * 0.587 - 0.587 *
#: 0.299 = 0), so the trace lives in the colour-difference channels only.
CHROMA = np.array([0.587, -0.299, 0.0]) / 0.587


@dataclass(frozen=True)
class Fingerprint:
    """A grid-locked trace, ``period`` pixels per cycle, +-``amplitude`` grey levels.

    ``kind``: ``grid`` (a checkerboard in every channel: the family the quickstart trains on),
    ``stripes`` (horizontal stripes: rows ``y % period == 0`` raised, the others lowered, zero
    mean; a trace unlike the checkerboards) or ``chroma`` (a checkerboard in the
    colour-difference channels along :data:`CHROMA`, luminance unchanged).
    """

    name: str = "grid-2"
    period: int = 2
    amplitude: float = 12.0
    kind: str = "grid"

    def pattern(self, height: int, width: int) -> np.ndarray:
        """The trace's per-pixel sign times amplitude, (height, width)."""
        yy, xx = np.mgrid[0:height, 0:width]
        if self.kind == "stripes":
            on = (yy % self.period) == 0
            return np.where(on, 1.0, -1.0 / (self.period - 1)) * self.amplitude
        half = max(1, self.period // 2)
        return np.where(((yy // half) + (xx // half)) % 2 == 0, 1.0, -1.0) * self.amplitude

    def rgb(self, height: int, width: int) -> np.ndarray:
        """The trace added to an RGB image, (height, width, 3)."""
        direction = CHROMA if self.kind == "chroma" else np.ones(3)
        return self.pattern(height, width)[:, :, None] * direction


#: The "generator" the quickstart and tests train on (a random tiny CLIP learns it reliably).
SEEN = Fingerprint("grid-2", period=2, amplitude=12.0)
#: A fainter trace of the same kind: a generator not seen in training.
UNSEEN = Fingerprint("grid-2-faint", period=2, amplitude=6.0)


#: A scene's random draws: the coarse colour grid (uint8) and the gradient's slope per channel.
Scene = tuple[np.ndarray, np.ndarray]


def draw_scene(rng: np.random.Generator) -> Scene:
    """Draw one scene's randomness from ``rng`` (cheap; the pixels come from :func:`render`).

    Kept apart from the rendering so that a writer can draw in order in one thread and render
    on several: the images then depend on the seed only, never on thread timing."""
    coarse = rng.uniform(30, 225, size=(rng.integers(2, 6), rng.integers(2, 6), 3))
    tilt = rng.uniform(-20, 20, size=(1, 1, 3))
    return coarse.astype(np.uint8), tilt


@lru_cache(maxsize=16)
def _columns(size: int) -> np.ndarray:
    """-1..1 across the image, (1, size, 1): the gradient's shape."""
    columns = np.linspace(-1.0, 1.0, size)[None, :, None]
    columns.setflags(write=False)
    return columns


@lru_cache(maxsize=32)
def _cached_trace(fingerprint: Fingerprint, side: int) -> np.ndarray:
    trace = fingerprint.rgb(side, side)
    trace.setflags(write=False)
    return trace


def _trace(fingerprint: Fingerprint, side: int) -> np.ndarray:
    """``fingerprint.rgb(side, side)``: computed once per (fingerprint, side) and kept, read-only,
    up to 512 px (6 MiB each); larger ones are cheap beside their encoding."""
    return _cached_trace(fingerprint, side) if side <= 512 else fingerprint.rgb(side, side)


def _scene_pixels(scene: Scene, size: int) -> np.ndarray:
    coarse, tilt = scene
    field = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(field, dtype=np.float64)  # a fresh, writable copy
    pixels += _columns(size) * tilt  # in place: the same sums as base + ramp
    return pixels


def smooth_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour field (float, 0..255): coarse noise upsampled, plus a gradient."""
    return _scene_pixels(draw_scene(rng), size)


def render(
    scene: Scene,
    size: int,
    fingerprint: Fingerprint | None,
    region: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """The (size, size, 3) uint8 pixels of a drawn scene, with ``fingerprint`` as in
    :func:`make_image`."""
    pixels = _scene_pixels(scene, size)
    if fingerprint is not None:
        top, left, side = region or (0, 0, size)
        pixels[top : top + side, left : left + side] += _trace(fingerprint, side)
    np.round(pixels, out=pixels)
    np.clip(pixels, 0, 255, out=pixels)
    return pixels.astype(np.uint8)


def make_image(
    rng: np.random.Generator,
    size: int,
    fingerprint: Fingerprint | None,
    region: tuple[int, int, int] | None = None,
) -> Image.Image:
    """One RGB image; with ``fingerprint`` it is a "fake" of that generator, over the whole
    image or, with ``region`` (top, left, side), in that square only (a pasted or inpainted
    part of a real photo)."""
    return Image.fromarray(render(draw_scene(rng), size, fingerprint, region), "RGB")


def make_set(
    n_per_class: int, size: int, fingerprint: Fingerprint = SEEN, seed: int = 0
) -> tuple[list[Image.Image], list[int]]:
    """``n_per_class`` real and ``n_per_class`` fake images (label 0 real, 1 fake), interleaved."""
    rng = np.random.default_rng(seed)
    images: list[Image.Image] = []
    labels: list[int] = []
    for _ in range(n_per_class):
        images.append(make_image(rng, size, None))
        labels.append(0)
        images.append(make_image(rng, size, fingerprint))
        labels.append(1)
    return images, labels


def write_images(
    images: list[Image.Image],
    labels: list[int],
    root: str | Path,
    class_dirs: tuple[str, ...] = ("0_real", "1_fake"),
    fmt: str = "png",
) -> list[Path]:
    """Write images into ``root/<class_dir>/NNNNN.<fmt>`` and return their paths."""
    root = Path(root)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / class_dirs[label]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.{fmt}"
        image.save(path)
        paths.append(path)
    return paths


#: Stand-ins for generators: the same kind of trace at other strengths and periods, and two
#: families unlike the checkerboards (new generators for few-shot adaptation, docs/adapt.md).
GENERATORS = {
    "grid-2": SEEN,
    "grid-2-faint": UNSEEN,
    "grid-2-strong": Fingerprint("grid-2-strong", period=2, amplitude=20.0),
    "grid-4": Fingerprint("grid-4", period=4, amplitude=12.0),
    "stripes-3": Fingerprint("stripes-3", period=3, amplitude=12.0, kind="stripes"),
    "chroma-2": Fingerprint("chroma-2", period=2, amplitude=12.0, kind="chroma"),
}


#: The writer's threads by default: one per CPU, at most 8 (the GIL-bound part, drawing the
#: scenes in order, caps what more would add).
WRITER_THREADS = min(8, os.cpu_count() or 1)

#: One image to write: its path, its drawn scene, its size and its fingerprint (None: real).
Job = tuple[Path, Scene, int, "Fingerprint | None"]


def _save(job: Job, fmt: str) -> None:
    path, scene, size, fingerprint = job
    pixels = render(scene, size, fingerprint)
    if fmt == "png":  # zlib level 1: lossless all the same, several times faster than 6
        Image.fromarray(pixels, "RGB").save(path, compress_level=1)
    else:
        Image.fromarray(pixels, "RGB").save(path)


def write_jobs(jobs: Iterator[Job], fmt: str = "png", workers: int | None = None) -> int:
    """Render and write ``jobs`` on a small thread pool; return how many were written.

    ``jobs`` is consumed in this thread, in order (it draws the scenes: the random stream is
    the serial one), and only the rendering and encoding run on the pool, so the files written
    are the same whatever the threads' timing. ``workers``: threads (default
    :data:`WRITER_THREADS`); 0 writes in this thread. A few images per thread are held at once."""
    workers = WRITER_THREADS if workers is None else workers
    count = 0
    if workers <= 0:
        for job in jobs:
            _save(job, fmt)
            count += 1
        return count
    pending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="synthetic") as pool:
        for job in jobs:
            pending.append(pool.submit(_save, job, fmt))
            count += 1
            if len(pending) >= 4 * workers:
                pending.popleft().result()  # raises a worker's error here
        while pending:
            pending.popleft().result()
    return count


def _layout_jobs(
    root: Path,
    layout: str,
    generators: tuple[str, ...],
    n_per_class: int,
    size: int,
    seed: int,
    fmt: str,
) -> Iterator[Job]:
    """The images of :func:`write_layout`, in the order (and with the draws) of
    ``make_set`` + ``write_images``, drawing each scene as it is yielded."""
    made: set[Path] = set()

    def job(folder: Path, name: str, rng: np.random.Generator, fp: Fingerprint | None) -> Job:
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        return folder / f"{name}.{fmt}", draw_scene(rng), size, fp

    def interleaved(folder: Path, class_dirs: tuple[str, str], fp: Fingerprint, seed: int):
        rng = np.random.default_rng(seed)  # as make_set: real, fake, real, fake...
        for i in range(n_per_class):
            yield job(folder / class_dirs[0], f"{2 * i:05d}", rng, None)
            yield job(folder / class_dirs[1], f"{2 * i + 1:05d}", rng, fp)

    for g, name in enumerate(generators):
        fingerprint = GENERATORS[name]
        if layout == "genimage":
            for s, split in enumerate(("train", "val")):
                folder = root / name / split
                yield from interleaved(folder, ("nature", "ai"), fingerprint, seed + 10 * g + s)
        elif layout in ("ufd", "chameleon"):
            folder = root / name if layout == "ufd" else root
            yield from interleaved(folder, ("0_real", "1_fake"), fingerprint, seed + 10 * g)
            if layout == "chameleon":
                break
        elif layout == "generic":
            rng = np.random.default_rng(seed + 10 * g)
            for i in range(n_per_class):
                yield job(root / name, f"{i:05d}", rng, fingerprint)
                if g == 0:
                    yield job(root / "real", f"{i:05d}", rng, None)
        else:
            raise ValueError(f"unknown layout {layout!r}")


def write_layout(
    root: str | Path,
    layout: str = "genimage",
    generators: tuple[str, ...] = ("grid-2", "grid-2-faint"),
    n_per_class: int = 64,
    size: int = 32,
    seed: int = 0,
    fmt: str = "png",
    workers: int | None = None,
) -> Path:
    """Write a synthetic data set in one of the field's layouts (see data/layouts.py).

    genimage: ``<root>/<generator>/{train,val}/{ai,nature}``; ufd: ``<root>/<generator>/
    {0_real,1_fake}``; chameleon: ``<root>/{0_real,1_fake}`` (first generator only); generic:
    ``<root>/{real,<generator>...}`` (attribution, one folder per generator). The pixels depend
    on the arguments only; ``workers`` threads render and encode them (see :func:`write_jobs`).
    """
    root = Path(root)
    unknown = [name for name in generators if name not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown generators {unknown}; known: {', '.join(GENERATORS)}")
    jobs = _layout_jobs(root, layout, generators, n_per_class, size, seed, fmt)
    write_jobs(jobs, fmt, workers)
    return root


def write_shortcut_set(
    root: str | Path, n_per_class: int = 100, aligned: bool = False, seed: int = 0
) -> Path:
    """A ``<root>/{0_real,1_fake}`` set with (or without) the classic file-format shortcut.

    Biased: reals are JPEG (quality 90) of 40-56 px, fakes PNG of 28-36 px, as in sets whose
    reals come from photo collections and fakes from generators. Aligned: both classes PNG of the
    same size range and equal compressibility. Fakes carry the usual synthetic fingerprint.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for label, folder in ((0, "0_real"), (1, "1_fake")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            low, high = (40, 56) if aligned or label == 0 else (28, 36)
            w, h = (int(v) for v in rng.integers(low, high + 1, size=2))
            # Aligned: reals carry the same trace with the opposite sign, so that file sizes
            # (PNG compresses a trace the same either way) do not tell the classes apart.
            trace = (
                SEEN
                if label
                else (Fingerprint("anti", SEEN.period, -SEEN.amplitude) if aligned else None)
            )
            image = make_image(rng, max(w, h), trace).crop((0, 0, w, h))
            if label == 0 and not aligned:
                image.save(root / folder / f"{i:05d}.jpg", quality=90)
            else:
                image.save(root / folder / f"{i:05d}.png")
    return root
