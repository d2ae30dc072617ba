"""P4: resident memory while `detect` scores a growing number of images (1k, 10k, 100k).

Streams N small JPEGs (hard links to a few hundred distinct files, so the folder costs no disk)
through `run_detect` into a JSONL file and records the process's RSS after 1k, 10k and 100k
images. Memory must not grow with N (target: flat within 10% from 1k to 100k). The input list
itself (N path strings) is built before the first reading.
    python benchmarks/bench_memory.py [--backbone tiny] [--images 100000]
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
import warnings
from pathlib import Path

from common import photo, save, table

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.apps.detect import run_detect
from miragedet.inference.detector import Detector

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE / 2**20


class Recording(Detector):
    """A Detector that notes RSS when the number of scored images reaches a milestone."""

    milestones: tuple[int, ...] = ()
    readings: list[dict]

    def iter_score(self, inputs, **kwargs):
        start = time.perf_counter()
        for n, prediction in enumerate(super().iter_score(inputs, **kwargs), start=1):
            yield prediction
            if n in self.milestones:
                gc.collect()
                elapsed = time.perf_counter() - start
                self.readings.append({"images": n, "rss_mib": rss_mib(), "seconds": elapsed})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=256)
    parser.add_argument("--out", default="bench_memory.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        originals = []
        for i in range(args.distinct):
            path = folder / f"src{i:04d}.jpg"
            photo(128, 96, i).save(path, quality=85)
            originals.append(path)
        paths = []
        for i in range(args.images):
            link = folder / f"img{i:07d}.jpg"
            os.link(originals[i % len(originals)], link)
            paths.append(str(link))
        model = MiraGe(load_backbone(f"random:{args.backbone}"), ModelConfig.for_method("mirage"))
        detector = Recording(model, batch_size=64, threads=2)
        marks = (1_000, 10_000, 100_000, args.images)
        detector.milestones = tuple(m for m in marks if m <= args.images)
        detector.readings = []
        run_detect(detector, paths, output=folder / "scores.jsonl", fmt="jsonl")
        rows = detector.readings
    base = rows[0]["rss_mib"]
    for row in rows:
        row["vs_first"] = row["rss_mib"] / base
        row["images_per_s"] = row["images"] / row["seconds"]
    print(f"P4: RSS while scoring, random:{args.backbone}, 128x96 JPEGs (target: flat within 10%)")
    table(
        rows,
        [
            ("images", "images", ",d"),
            ("rss_mib", "RSS MiB", ".0f"),
            ("vs_first", "vs 1k", ".3f"),
            ("images_per_s", "images/s", ".0f"),
        ],
    )
    save(args.out, rows, backbone=args.backbone)


if __name__ == "__main__":
    main()
