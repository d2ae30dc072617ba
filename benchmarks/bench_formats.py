"""Decode cost of each image format against JPEG of the same pixel count (1, 4 and 12 MP).

Writes photo-like images with each format's own encoder (Pillow, pillow-heif, Pillow's AVIF,
pillow-jxl-plugin, PiDNG for a 12-bit Bayer DNG), then times what `detect` does per image before
the forward: decode (with the reduced-scale decode `detect` uses by default: JPEG draft, RAW half
size) and CLIP preprocessing, one thread. "scoring ms" adds the measured ViT-B/32 forward per
image (batch 32), and "vs JPEG" compares that per-image folder-scoring cost with JPEG's.
    python benchmarks/bench_formats.py [--repeats 3] [--sizes 1,4,12]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import photo, save, table

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.inference.detector import Detector

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
SIZES = {1: (1152, 864), 4: (2304, 1728), 12: (4000, 3000)}


def encoders() -> dict:
    def pil(fmt: str, **kw):
        def encode(image, path: Path) -> Path:
            buf = io.BytesIO()
            image.save(buf, fmt, **kw)
            path.write_bytes(buf.getvalue())
            return path

        return encode

    def dng(image, path: Path) -> Path:
        from test_formats import write_dng

        w, h = image.size
        return write_dng(path, w, h)

    return {
        "JPEG q90": (".jpg", pil("JPEG", quality=90)),
        "PNG": (".png", pil("PNG", compress_level=6)),
        "WebP q90": (".webp", pil("WEBP", quality=90)),
        "HEIC q90": (".heic", pil("HEIF", quality=90)),
        "AVIF q90": (".avif", pil("AVIF", quality=90, speed=8)),
        "JPEG XL q90": (".jxl", pil("JXL", quality=90, effort=3)),
        "DNG 12-bit": (".dng", dng),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,4,12", help="megapixels, from 1, 4, 12")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbone", default="vit-b-32")
    parser.add_argument("--out", default="bench_formats.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    model = MiraGe(load_backbone(f"random:{args.backbone}"), ModelConfig.for_method("mirage"))
    detector = Detector(model, threads=1)
    exact = Detector(model, threads=1, exact_decode=True)
    torch.set_num_threads(2)
    size = detector.preprocess.image_size
    batch = torch.randn(32, 3, size, size)
    detector.forward_tensors(batch)
    start = time.perf_counter()
    detector.forward_tensors(batch)
    forward_ms = (time.perf_counter() - start) / 32 * 1000
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in [int(s) for s in args.sizes.split(",")]:
            w, h = SIZES[mp]
            image = photo(w, h, mp)
            jpeg_ms = None
            for name, (ext, encode) in encoders().items():
                path = encode(image, Path(tmp) / f"{mp}mp{ext}")
                times = {}
                for label, d in (("draft", detector), ("exact", exact)):
                    d._prepare(path)  # warm-up
                    spent = []
                    for _ in range(args.repeats):
                        begin = time.perf_counter()
                        d._prepare(path)
                        spent.append(time.perf_counter() - begin)
                    times[label] = float(np.median(spent)) * 1000
                jpeg_ms = times["draft"] if jpeg_ms is None else jpeg_ms
                rows.append(
                    {
                        "format": name,
                        "megapixels": mp,
                        "kb": path.stat().st_size / 1024,
                        "decode_ms": times["draft"],
                        "exact_ms": times["exact"],
                        "scoring_ms": times["draft"] + forward_ms,
                        "vs_jpeg": (times["draft"] + forward_ms) / (jpeg_ms + forward_ms),
                    }
                )
                print(f"{name} {mp} MP: {times['draft']:.1f} ms", file=sys.stderr)
    print(
        "decode + preprocess per image, 1 thread (default reduced-scale decode; 'full' without "
        f"it); scoring adds the {args.backbone} forward ({forward_ms:.1f} ms/image at batch 32, "
        "2 threads)"
    )
    table(
        rows,
        [
            ("format", "format", ""),
            ("megapixels", "MP", "d"),
            ("kb", "KiB", ".0f"),
            ("decode_ms", "decode ms", ".1f"),
            ("exact_ms", "full decode ms", ".1f"),
            ("scoring_ms", "scoring ms", ".1f"),
            ("vs_jpeg", "vs JPEG", ".2f"),
        ],
    )
    save(args.out, rows, backbone=args.backbone, forward_ms=forward_ms)


if __name__ == "__main__":
    main()
