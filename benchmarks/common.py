"""Helpers the benchmark scripts share: test images, timing, and the JSON they write."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like image (smooth colour fields, edges and sensor noise), so JPEG sizes and
    decode costs are those of real photographs rather than of white noise or flat colour."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)
    noise = rng.normal(0.0, 6.0, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def write_jpegs(folder: Path, n: int, sizes: list[tuple[int, int]], quality: int = 90) -> Path:
    """N JPEGs cycling through ``sizes`` (re-used when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"img{i:06d}.jpg"
        if not path.exists():
            w, h = sizes[i % len(sizes)]
            photo(w, h, i).save(path, quality=quality)
    return folder


def timed(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    from miragedet.inference.precision import cpu_native, resolve

    return {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_native("bf16"),
        "auto_precision": resolve("auto", "cpu").precision,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def machine_line() -> str:
    """One line naming the hardware, printed above every table (figures hold on it only)."""
    m = machine()
    return (
        f"# {m['cpu_model']}, {m['cpus']} CPUs, {m['cpu_capability']}, native bf16: "
        f"{'yes' if m['cpu_native_bf16'] else 'no'}, torch {m['torch']}"
        + (f", GPU {m['cuda']}" if m["cuda"] else "")
    )


def save(path: str, rows: list[dict[str, Any]], **extra: Any) -> None:
    Path(path).write_text(json.dumps({"machine": machine(), **extra, "rows": rows}, indent=1))
    print(f"wrote {path}")


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """Print rows as an aligned table: columns are (key, header, format), under a line naming
    the machine."""
    print(machine_line())
    cells = [
        ["-" if row.get(key) is None else format(row[key], fmt) for key, _, fmt in columns]
        for row in rows
    ]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, (_, h, _) in enumerate(columns)]
    print("  ".join(f"{h:>{w}}" for (_, h, _), w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(f"{c:>{w}}" for c, w in zip(r, widths, strict=True)))
