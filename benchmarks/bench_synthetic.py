"""`miragedet make-synthetic`: images written per second, end to end and in-process.

Times the command as users run it (a fresh process: start-up included) on a genimage set of
two generators, and `write_layout` in-process with one thread and with the default pool. The
``legacy`` row is the 0.1 writer reproduced here (Pillow's PNG at its default level 6, one
thread, the trace recomputed per image); its files are checked to decode to the very pixels of
the new writer's (the set is a function of the seed only). Cases run in turn (round robin),
``--repeats`` times; medians are shown. Wall times need an otherwise idle machine; the CPU time
per image (all threads) moves less with other load.
    python benchmarks/bench_synthetic.py [--size 224] [--n-per-class 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import save, table
from PIL import Image

from miragedet.data.synthetic import GENERATORS, WRITER_THREADS, write_layout

GENERATOR_NAMES = ("grid-2", "grid-2-faint")  # make-synthetic's default


def legacy_image(rng: np.random.Generator, size: int, fingerprint) -> Image.Image:
    """make_image as 0.1 wrote it."""
    coarse = rng.uniform(30, 225, size=(rng.integers(2, 6), rng.integers(2, 6), 3))
    field = Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    base = np.asarray(field, dtype=np.float64)
    ramp = np.linspace(-1.0, 1.0, size)[None, :, None] * rng.uniform(-20, 20, size=(1, 1, 3))
    pixels = base + ramp
    if fingerprint is not None:
        pixels += fingerprint.rgb(size, size)
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")


def legacy_layout(root: Path, n_per_class: int, size: int, seed: int = 0) -> None:
    """write_layout(root, "genimage") as 0.1 wrote it: build each split's set, then save it."""
    for g, name in enumerate(GENERATOR_NAMES):
        for s, split in enumerate(("train", "val")):
            rng = np.random.default_rng(seed + 10 * g + s)
            images = []
            for _ in range(n_per_class):
                images.append(legacy_image(rng, size, None))
                images.append(legacy_image(rng, size, GENERATORS[name]))
            for i, image in enumerate(images):
                folder = root / name / split / ("nature", "ai")[i % 2]
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"{i:05d}.png")


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children, all threads."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed_write(write, root: Path) -> tuple[float, float]:
    """Seconds and CPU seconds (all threads, a subprocess's included) of one fresh write."""
    shutil.rmtree(root, ignore_errors=True)
    start, start_cpu = time.perf_counter(), cpu_seconds()
    write(root)
    return time.perf_counter() - start, cpu_seconds() - start_cpu


def same_pixels(a: Path, b: Path) -> bool:
    """Whether two sets hold the same file names, decoding to the same pixels."""

    def decode(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image)

    names = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    if names != sorted(p.relative_to(b) for p in b.rglob("*.png")):
        return False
    return all(np.array_equal(decode(a / name), decode(b / name)) for name in names)


def lscpu_model() -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return next(
        (ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), None
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n-per-class", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-legacy", action="store_true", help="Skip the slow 0.1 writer.")
    parser.add_argument("--out", default="bench_synthetic.json")
    args = parser.parse_args()
    n, size = args.n_per_class, args.size
    command = [sys.executable, "-m", "miragedet", "make-synthetic"]
    options = ["--size", str(size), "--n-per-class", str(n)]
    cases = [
        ("make-synthetic (CLI)", str(WRITER_THREADS), lambda r: subprocess.run(
            [*command, str(r), *options], check=True, stdout=subprocess.DEVNULL)),
        ("write_layout", "1 (serial)", lambda r: write_layout(r, n_per_class=n, size=size,
                                                             workers=0)),
        ("write_layout", str(WRITER_THREADS), lambda r: write_layout(r, n_per_class=n, size=size)),
    ]  # fmt: skip
    if not args.no_legacy:
        cases.append(("0.1 writer (legacy)", "1", lambda r: legacy_layout(r, n, size)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        roots = [Path(tmp) / f"set{k}" for k in range(len(cases))]
        runs: list[list[tuple[float, float]]] = [[] for _ in cases]
        for _ in range(args.repeats):  # round robin: a busy spell hits every case alike
            for k, (_, _, write) in enumerate(cases):
                runs[k].append(timed_write(write, roots[k]))
        for (what, threads, _), root, timings in zip(cases, roots, runs, strict=True):
            images = len(list(root.rglob("*.png")))
            seconds, cpu = (float(np.median(column)) for column in zip(*timings, strict=True))
            rows.append({
                "what": what, "threads": threads, "images": images, "seconds": seconds,
                "images_per_s": images / seconds, "cpu_ms_per_image": cpu / images * 1000,
                "mib": sum(p.stat().st_size for p in root.rglob("*.png")) / 2**20,
            })  # fmt: skip
        legacy = Path(tmp) / f"set{len(rows) - 1}"
        same = None if args.no_legacy else same_pixels(Path(tmp) / "set1", legacy)
    cli = rows[0]
    print(
        f"make-synthetic --size {size} --n-per-class {n} (genimage, {', '.join(GENERATOR_NAMES)}: "
        f"{cli['images']} PNGs), median of {args.repeats} round-robin runs"
        + ("" if same is None else f"; legacy pixels identical: {'yes' if same else 'NO'}")
    )
    table(
        rows,
        [
            ("what", "what", ""),
            ("threads", "threads", ""),
            ("images", "images", "d"),
            ("seconds", "s", ".2f"),
            ("images_per_s", "images/s", ".0f"),
            ("cpu_ms_per_image", "CPU ms/image", ".2f"),
            ("mib", "MiB", ".1f"),
        ],
    )
    save(
        args.out, rows, size=size, n_per_class=n, repeats=args.repeats, lscpu_model=lscpu_model(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(), legacy_same_pixels=same,
    )  # fmt: skip
    if same is False:
        sys.exit("the legacy writer's pixels differ from write_layout's")


if __name__ == "__main__":
    main()
