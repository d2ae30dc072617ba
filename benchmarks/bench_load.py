"""The server under load: N concurrent clients for D seconds, mixed valid and invalid uploads.

Starts `miragedet serve` on 127.0.0.1 with a random-weight checkpoint (or uses --url, which must
be a loopback address), then runs --clients asyncio clients that each post 1-4 images per request
in a loop: photo-like JPEGs and PNGs, truncated JPEGs, non-images, and images whose header
claims enormous dimensions. Prints requests/s, p50/p99 latency, the count of each status, how
many 503s carried Retry-After, and the server's resident memory over the run.
    python benchmarks/bench_load.py [--clients 32] [--duration 60] [--max-queue 64]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
from common import photo, save, table

KEY = "bench-load-key"


def _encode(image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, quality=90) if fmt == "JPEG" else image.save(buf, fmt)
    return buf.getvalue()


def _huge_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 9))


def payloads() -> list[tuple[str, bytes, str]]:
    """(kind, bytes, filename): what clients pick from."""
    items = []
    for i in range(8):
        jpeg = _encode(photo(640, 480, i), "JPEG")
        items.append(("valid", jpeg, f"photo{i}.jpg"))
        items.append(("valid", _encode(photo(256, 256, 100 + i), "PNG"), f"small{i}.png"))
        items.append(("truncated", jpeg[: len(jpeg) // 3], f"cut{i}.jpg"))
    items.append(("not-image", b"<html>hello</html>", "page.jpg"))
    items.append(("not-image", os.urandom(2000), "noise.png"))
    items.append(("huge-dims", _huge_png(), "huge.png"))
    return items


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, work: Path) -> tuple[subprocess.Popen, str]:
    from miragedet import MiraGe, ModelConfig, load_backbone

    checkpoint = work / "ckpt"
    MiraGe(
        load_backbone(f"random:{args.backbone}"), ModelConfig.for_method("mirage")
    ).save_pretrained(str(checkpoint))
    port = _free_port()
    command = [sys.executable, "-m", "miragedet", "serve", "-m", str(checkpoint)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--max-queue", str(args.max_queue)]
    command += ["--batch-size", str(args.max_batch), "--log-level", "warning"]
    env = dict(os.environ, MIRAGEDET_API_KEY=KEY)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the server exited while starting")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready")


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def client(base: str, until: float, items, rng: random.Random, log: list) -> None:
    async with httpx.AsyncClient(headers={"X-API-Key": KEY}, timeout=60) as http:
        while time.perf_counter() < until:
            chosen = [rng.choice(items) for _ in range(rng.randint(1, 4))]
            files = [("files", (name, data)) for _, data, name in chosen]
            start = time.perf_counter()
            try:
                r = await http.post(f"{base}/v1/detect", files=files)
                status, retry = r.status_code, r.headers.get("retry-after")
                per_item = [x["status"] for x in r.json().get("results", [])]
            except httpx.HTTPError as exc:
                status, retry, per_item = f"error:{type(exc).__name__}", None, []
            log.append((status, time.perf_counter() - start, retry, per_item))
            if status == 503:
                await asyncio.sleep(float(retry or 1) * rng.random())


async def load(base: str, clients: int, duration: float, pid: int | None) -> dict:
    items = payloads()
    log: list = []
    memory: list[tuple[float, float]] = []  # (seconds since start, MiB)
    until = time.perf_counter() + duration
    begin = time.perf_counter()

    async def sample() -> None:
        while time.perf_counter() < until and pid:
            value = rss_mib(pid)
            if value:
                memory.append((time.perf_counter() - begin, value))
            await asyncio.sleep(1)

    start = time.perf_counter()
    await asyncio.gather(
        sample(),
        *[client(base, until, items, random.Random(i), log) for i in range(clients)],
    )
    elapsed = time.perf_counter() - start
    latencies = np.array([t for _, t, _, _ in log]) * 1000
    counts = Counter(str(s) for s, _, _, _ in log)
    unavailable = [r for s, _, r, _ in log if s == 503]
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": len(log),
        "requests_per_s": len(log) / elapsed,
        "images_scored": sum(x == 200 for *_, items in log for x in items),
        "item_status_counts": dict(
            sorted(Counter(str(x) for *_, items in log for x in items).items())
        ),
        "p50_ms": float(np.percentile(latencies, 50)) if len(log) else None,
        "p99_ms": float(np.percentile(latencies, 99)) if len(log) else None,
        "status_counts": dict(sorted(counts.items())),
        "server_errors": sum(
            1 for s, *_ in log if not isinstance(s, int) or (s >= 500 and s != 503)
        ),
        "503_with_retry_after": sum(1 for r in unavailable if r),
        "503_total": len(unavailable),
        "rss_first_mib": memory[0][1] if memory else None,
        # after the first sixth of the run: allocator pools and batch buffers have been sized
        "rss_warm_mib": next((m for t, m in memory if t >= duration / 6), None),
        "rss_last_mib": memory[-1][1] if memory else None,
        "rss_max_mib": max(m for _, m in memory) if memory else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--url", default=None, help="An already running server (loopback only).")
    parser.add_argument("--out", default="bench_load.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
                raise SystemExit("--url must be a loopback address: this tool floods what it hits")
            base, pid = args.url.rstrip("/"), None
        else:
            proc, base = start_server(args, Path(tmp))
            pid = proc.pid
        try:
            result = asyncio.run(load(base, args.clients, args.duration, pid))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    print(
        f"{args.clients} clients for {args.duration:.0f} s against {base} "
        f"(random:{args.backbone}, max queue {args.max_queue} images)"
    )
    table(
        [result],
        [
            ("requests", "requests", "d"),
            ("requests_per_s", "req/s", ".1f"),
            ("images_scored", "images scored", "d"),
            ("p50_ms", "p50 ms", ".0f"),
            ("p99_ms", "p99 ms", ".0f"),
            ("server_errors", "5xx (not 503)", "d"),
            ("503_total", "503", "d"),
            ("503_with_retry_after", "503 w/ Retry-After", "d"),
            ("rss_first_mib", "RSS idle MiB", ".0f"),
            ("rss_warm_mib", "RSS warm MiB", ".0f"),
            ("rss_max_mib", "RSS max MiB", ".0f"),
            ("rss_last_mib", "RSS last MiB", ".0f"),
        ],
    )
    print("request status counts:", result["status_counts"])
    print("per-image status counts:", result["item_status_counts"])
    save(args.out, [result], backbone=args.backbone, max_queue=args.max_queue)


if __name__ == "__main__":
    main()
