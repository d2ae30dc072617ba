"""Start-up: how long the light commands take, one image scored, and the server ready, each
against the import floor it cannot beat.

Floors: ``python -c pass`` (the interpreter) and ``python -c "import torch,
transformers.models.clip.modeling_clip"`` (what scoring must load). Each command runs in a fresh
process, ``--repeats`` times in turn (round robin); the median is shown.
    python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from common import save, table

SCRIPT = Path(sysconfig.get_path("scripts")) / "miragedet"


def run(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_to_ready(checkpoint: Path) -> tuple[float, float]:
    """Seconds from starting `miragedet serve` to /readyz answering 200, and the server's own
    miragedet_ready_seconds gauge."""
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(SCRIPT), "serve", "-m", str(checkpoint), "--port", str(port), "--log-level",
         "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(6000):  # bounded: at most 6000 polls of 10 ms plus their requests
            if proc.poll() is not None:
                raise RuntimeError("the server exited before it was ready")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.01)
        seconds = time.perf_counter() - start
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        gauge = next(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("miragedet_ready_seconds ")
        )
        return seconds, gauge
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench_startup.json")
    args = parser.parse_args()
    from miragedet import MiraGe, ModelConfig, load_backbone, save_pretrained
    from miragedet.data.synthetic import SEEN, make_image

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = work / "tiny"
        save_pretrained(MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage")), checkpoint)
        image = work / "one.png"
        make_image(np.random.default_rng(0), 224, SEEN).save(image)
        py = sys.executable
        cases = {
            "python -c pass": [py, "-c", "pass"],
            "miragedet --version": [str(SCRIPT), "--version"],
            "miragedet --help": [str(SCRIPT), "--help"],
            "import torch + CLIP modeling (floor)": [
                py, "-c", "import torch, transformers.models.clip.modeling_clip",
            ],
            "import transformers + CLIPModel": [py, "-c", "from transformers import CLIPModel"],
            "miragedet detect one.png (tiny)": [
                str(SCRIPT), "detect", str(image), "-m", str(checkpoint),
            ],
        }  # fmt: skip
        # round robin, so that a slower spell of a shared machine hits every command alike
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, command in cases.items():
                times[name].append(run(command))
        rows = [{"command": n, "seconds": float(np.median(t))} for n, t in times.items()]
        ready = [serve_to_ready(checkpoint) for _ in range(max(1, args.repeats // 2))]
        rows.append(
            {
                "command": "miragedet serve -> /readyz 200 (tiny)",
                "seconds": float(np.median([r[0] for r in ready])),
                "gauge": float(np.median([r[1] for r in ready])),
            }
        )
    floors = {"interpreter": rows[0]["seconds"], "scoring": rows[3]["seconds"]}
    for row in rows:
        floor = "scoring" if "detect" in row["command"] or "serve" in row["command"] else None
        row["vs_floor"] = row["seconds"] / floors[floor] if floor else None
    table(
        rows,
        [
            ("command", "command", ""),
            ("seconds", "seconds", ".3f"),
            ("vs_floor", "x scoring floor", ".2f"),
            ("gauge", "ready gauge s", ".2f"),
        ],
    )
    save(args.out, rows, repeats=args.repeats, cpu_count=os.cpu_count())


if __name__ == "__main__":
    main()
