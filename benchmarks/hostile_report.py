"""What happens to each kind of hostile file: the corpus of tests/hostile.py through the Python
API, `miragedet detect` and the server, counted per category (the figures of
docs/reliability.md; the tests assert the same behaviour on the same corpus).
    python benchmarks/hostile_report.py [--out hostile_report.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import httpx
from bench_load import _free_port
from common import save, table

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from hostile import write_corpus
from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.data.dataset import ImageDecodeError
from miragedet.inference.detector import Detector, to_image


def family(category: str) -> str:
    return "valid (odd but legal)" if category.startswith("valid") else category.rsplit("-", 1)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="hostile_report.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files, _ = write_corpus(work / "corpus")
        checkpoint = work / "ckpt"
        model = MiraGe(load_backbone("tiny"), ModelConfig.for_method("mirage", depth=2))
        model.save_pretrained(str(checkpoint))
        detector = Detector(model)
        slowest: dict[str, float] = defaultdict(float)
        for path, category in files.items():
            start = time.perf_counter()
            with contextlib.suppress(ImageDecodeError):
                to_image(str(path), draft_size=detector.draft_size)
            elapsed = time.perf_counter() - start
            slowest[family(category)] = max(slowest[family(category)], elapsed)
        api = {r.source: r.error is None for r in detector.score([str(p) for p in files])}

        out = work / "rows.jsonl"
        command = [sys.executable, "-m", "miragedet", "detect", str(work / "corpus"), "-m"]
        command += [str(checkpoint), "-f", "jsonl", "-o", str(out)]
        done = subprocess.run(command, capture_output=True, text=True)
        rows = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}

        port = _free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "miragedet",
                "serve",
                "-m",
                str(checkpoint),
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ),
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            statuses = {}
            paths = sorted(files)
            for i in range(0, len(paths), 16):
                batch = paths[i : i + 16]
                r = httpx.post(
                    f"{base}/v1/detect",
                    files=[("files", (p.name, p.read_bytes())) for p in batch],
                    timeout=120,
                )
                if r.status_code == 200:
                    statuses.update({x["name"]: x["status"] for x in r.json()["results"]})
                else:
                    statuses.update({p.name: r.status_code for p in batch})
            alive = httpx.get(f"{base}/healthz").status_code == 200
        finally:
            server.terminate()
            server.wait(timeout=30)

    summary: dict[str, Counter] = defaultdict(Counter)
    for path, category in files.items():
        c = summary[family(category)]
        c["files"] += 1
        c["api_scored"] += api[str(path)]
        c["detect_rows"] += str(path) in rows
        c["detect_scored"] += rows.get(str(path), {}).get("error", "x") is None
        c[f"server_{statuses.get(path.name, 'none')}"] += 1
    result = []
    for name in sorted(summary):
        c = summary[name]
        server = ", ".join(f"{k[7:]}: {v}" for k, v in sorted(c.items()) if k.startswith("server_"))
        result.append(
            {
                "category": name,
                "files": c["files"],
                "api_scored": c["api_scored"],
                "api_refused": c["files"] - c["api_scored"],
                "detect_rows": c["detect_rows"],
                "detect_scored": c["detect_scored"],
                "server": server,
                "slowest_ms": slowest[name] * 1000,
            }
        )
    total = sum(r["files"] for r in result)
    print(
        f"{total} files; detect exit status {done.returncode} with {len(rows)} rows; "
        f"server alive afterwards: {alive}"
    )
    table(
        result,
        [
            ("category", "category", ""),
            ("files", "files", "d"),
            ("api_scored", "API scored", "d"),
            ("api_refused", "API refused", "d"),
            ("detect_rows", "detect rows", "d"),
            ("detect_scored", "detect scored", "d"),
            ("server", "server statuses", ""),
            ("slowest_ms", "slowest decode ms", ".0f"),
        ],
    )
    save(args.out, result, files=total, detect_exit=done.returncode, server_alive=alive)


if __name__ == "__main__":
    main()
