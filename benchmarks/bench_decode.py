"""JPEG decode at reduced scale (Pillow's draft): speed, and how far scores move.

`Detector` decodes JPEGs at 1/2, 1/4 or 1/8 scale when that leaves at least twice the model's
resize target (448 px for 224 px models), then resizes as usual. This script times decode +
preprocess of 1-4 MP photo-like JPEGs with and without it, and reports the largest change of
p(fake) and of the model input over those images.
    python benchmarks/bench_decode.py [--backbone vit-b-32] [--images 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import save, table, write_jpegs

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.inference.detector import Detector

SIZES = [(1280, 960), (1600, 1200), (2048, 1536), (2304, 1728)]  # 1.2 to 4 MP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="vit-b-32")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--out", default="bench_decode.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        paths = sorted(str(p) for p in write_jpegs(Path(tmp), args.images, SIZES).iterdir())
        model = MiraGe(load_backbone(f"random:{args.backbone}"), ModelConfig.for_method("mirage"))
        rows, results = [], {}
        for draft in (False, True):
            detector = Detector(model, exact_decode=not draft, threads=1)
            start = time.perf_counter()
            pixels = torch.stack([detector._prepare(p) for p in paths])
            ms = (time.perf_counter() - start) / len(paths) * 1000
            probs = detector.forward_tensors(pixels)[:, 1]
            results[draft] = (pixels, probs)
            rows.append({"decode": "draft" if draft else "full", "ms_per_image": ms})
    full, drafted = results[False], results[True]
    speedup = rows[0]["ms_per_image"] / rows[1]["ms_per_image"]
    rows[1]["speedup"] = speedup
    rows[1]["max_abs_dp"] = float(np.abs(full[1] - drafted[1]).max())
    rows[1]["mean_abs_pixel"] = float((full[0] - drafted[0]).abs().mean())
    print(f"decode + preprocess, {args.images} JPEGs of 1.2-4 MP, 1 thread, random:{args.backbone}")
    table(
        rows,
        [
            ("decode", "decode", ""),
            ("ms_per_image", "ms/image", ".1f"),
            ("speedup", "speed-up", ".2f"),
            ("max_abs_dp", "max |dp(fake)|", ".2e"),
            ("mean_abs_pixel", "mean |d input|", ".2e"),
        ],
    )
    save(args.out, rows, backbone=args.backbone, images=args.images)


if __name__ == "__main__":
    main()
