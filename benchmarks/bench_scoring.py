"""Distributed scoring throughput: `score-dataset` with Ray Data on 1 and 2 actors, and locally.

Scores a folder of photo-like JPEGs with a random-weight MiraGe of a real backbone shape and
prints images/s counting everything (Ray start-up, actor start, decode, forward, Parquet), the
time to the first row, and the steady rate after it. Each actor gets --cpus-per-worker CPUs (Ray
sets its torch threads to that); the local engine uses all of this machine's threads.
    python benchmarks/bench_scoring.py [--backbone vit-b-32] [--images 512] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from common import save, table, write_jpegs

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.inference.score_dataset import score_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="vit-b-32")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--out", default="bench_scoring.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp(prefix="miragedet-bench-"))
    try:
        images = write_jpegs(work / "images", args.images, [(1024, 768), (800, 600)])
        checkpoint = work / "ckpt"
        model = MiraGe(load_backbone(f"random:{args.backbone}"), ModelConfig.for_method("mirage"))
        model.save_pretrained(str(checkpoint))
        runs = [("local", 1)] + [("ray", int(w)) for w in args.workers.split(",")]
        rows = []
        for engine, workers in runs:
            out = work / f"out-{engine}-{workers}"
            first: list[float] = []
            counted = [0]

            def on_rows(n: int, first=first, counted=counted) -> None:
                if not first:
                    first.append(time.perf_counter())
                else:
                    counted[0] += n  # rows after the first batch, against time after it

            start = time.perf_counter()
            report = score_dataset(
                str(images),
                out,
                str(checkpoint),
                engine=engine,
                workers=workers,
                batch_size=args.batch_size,
                shard_size=args.shard_size,
                on_rows=on_rows,
            )
            wall = time.perf_counter() - start
            rows.append(
                {
                    "engine": engine,
                    "workers": workers if engine == "ray" else None,
                    "images": report.scored,
                    "wall_s": wall,
                    "images_per_s": report.scored / wall,
                    "startup_s": first[0] - start,
                    "steady_images_per_s": counted[0] / (start + wall - first[0]),
                }
            )
        base = next(r for r in rows if r["engine"] == "ray")["steady_images_per_s"]
        for r in rows:
            ray = r["engine"] == "ray"
            r["steady_vs_1_actor"] = r["steady_images_per_s"] / base if ray else None
        print(
            f"score-dataset, {args.images} JPEGs of 1024x768/800x600, random:{args.backbone}, "
            f"batch {args.batch_size}"
        )
        table(
            rows,
            [
                ("engine", "engine", ""),
                ("workers", "actors", "d"),
                ("wall_s", "wall s", ".1f"),
                ("images_per_s", "images/s", ".1f"),
                ("startup_s", "to 1st row s", ".1f"),
                ("steady_images_per_s", "steady img/s", ".1f"),
                ("steady_vs_1_actor", "steady vs 1", ".2f"),
            ],
        )
        save(args.out, rows, backbone=args.backbone, images=args.images)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
