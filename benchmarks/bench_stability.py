"""Cost of `--stability` (k re-deliveries scored with each image) against plain scoring.

Prints a table and writes JSON. Random-weight backbones of real shapes; CPU unless --device.
    python benchmarks/bench_stability.py [--backbones tiny,vit-b-32] [--images 16] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import numpy as np
import torch
from PIL import Image

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.inference.detector import Detector
from miragedet.inference.stability import Stability


def photos(n: int, size: tuple[int, int] = (800, 600), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        for _ in range(n)
    ]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", default="tiny,vit-b-32")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench_stability.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="prompt depth")
    images = photos(args.images)
    stability = Stability()
    rows = []
    for name in args.backbones.split(","):
        backbone = load_backbone(f"random:{name}")
        model = MiraGe(backbone, ModelConfig.for_method("mirage"))
        detector = Detector(model, device=args.device, batch_size=args.images)
        plain = timed(lambda d=detector: d.score(images), args.repeats)
        stable = timed(lambda d=detector: d.score(images, stability=stability), args.repeats)
        rows.append(
            {
                "backbone": name,
                "images": args.images,
                "plain_ms_per_image": 1000 * plain / args.images,
                "stability_ms_per_image": 1000 * stable / args.images,
                "ratio": stable / plain,
                "k": len(stability.variants),
            }
        )
    print(
        f"{'backbone':<10} {'plain ms/img':>13} {'stability ms/img':>17} {'ratio':>6}"
        f"   (k = {len(stability.variants)} re-deliveries, {args.images} images of 800x600, "
        f"{args.device}, {torch.get_num_threads()} threads)"
    )
    for r in rows:
        print(
            f"{r['backbone']:<10} {r['plain_ms_per_image']:>13.1f} "
            f"{r['stability_ms_per_image']:>17.1f} {r['ratio']:>6.2f}"
        )
    meta = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
        "device": args.device,
    }
    with open(args.out, "w") as handle:
        json.dump({"meta": meta, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
