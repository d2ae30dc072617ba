"""Video: ms per clip for 16 sampled frames of a 1080p H.264 clip, short and long, decode's share
of the whole, and seeking against decoding every frame.

Writes two H.264 clips (x264 ultrafast, default keyframe interval 250, 25 fps, 1920 x 1080: a
drifting colour field) of ``--short`` and ``--long`` seconds, then per clip, ``--repeats`` times
in turn: decode the 16 sampled frames as scoring does (seeking; keyframes when samples are 10 s
or more apart; frames converted at the draft size: :func:`miragedet.data.video.read_video`),
the same with ``seek="exact"`` (the frame shown at each time), every frame (the naive way,
PyAV's decoder, no conversion), and score the clip end to end with a ViT-B/32-shaped detector
(random weights: speed does not depend on them). Medians.
    python benchmarks/bench_video.py [--short 10 --long 600 --repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from common import save, table

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.data.video import read_video
from miragedet.inference.detector import Detector


def write_video(path: Path, seconds: float, height: int = 1080, fps: int = 25) -> Path:
    """A 16:9 H.264 clip ``height`` pixels high: a smooth field panning (cheap to make)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (9, 16, 3), np.uint8)
    width = height * 16 // 9 // 2 * 2
    field = np.asarray(Image.fromarray(base).resize((width + 128, height), Image.BICUBIC))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(int(seconds * fps)):
            x = int(64 + 60 * np.sin(i / 50))
            frame = av.VideoFrame.from_ndarray(field[:, x : x + width], format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def decode_all(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=float, default=10.0)
    parser.add_argument("--long", type=float, default=600.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--all-frames", action="store_true", help="also time decoding all")
    parser.add_argument("--height", type=int, default=1080, help="frame height (16:9)")
    parser.add_argument("--backbone", default="vit-b-32", help="a random:<preset> shape")
    parser.add_argument("--precision", default="auto", help="auto|fp32|bf16")
    parser.add_argument("--out", default="benchmarks/results/bench_video.json")
    args = parser.parse_args()
    backbone = load_backbone(f"random:{args.backbone}")
    detector = Detector(MiraGe(backbone, ModelConfig.for_method("mirage")),
                        precision=args.precision, frames=16,
                        batch_size=16)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, seconds in (("short", args.short), ("long", args.long)):
            print(f"writing the {seconds:g} s clip ...", file=sys.stderr)
            path = write_video(Path(tmp) / f"{name}.mp4", seconds, args.height)
            detector.score([path])  # warm-up
            sampling = detector.video_sampling  # as scoring decodes: resize view, drafted
            decode = median_ms(lambda p=path, s=sampling: read_video(p, s), args.repeats)
            total = median_ms(lambda p=path: detector.score([p]), args.repeats)
            every = median_ms(lambda p=path: decode_all(p), 1) if args.all_frames else None
            exact = dataclasses.replace(sampling, seek="exact")  # the frame at each time
            exact_ms = median_ms(lambda p=path, s=exact: read_video(p, s), args.repeats)
            rows.append({
                "clip": f"{seconds:g} s {args.height}p H.264",
                "mb": path.stat().st_size / 2**20,
                "decode_ms": decode, "score_ms": total, "decode_share": decode / total,
                "decode_exact_ms": exact_ms, "decode_all_ms": every,
                "precision": detector.precision,
            })  # fmt: skip
    rows[1]["long_vs_short"] = rows[1]["score_ms"] / rows[0]["score_ms"]
    table(rows, [("clip", "clip", ""), ("mb", "MB", ".1f"), ("decode_ms", "decode 16 ms", ".0f"),
                 ("score_ms", "clip scored ms", ".0f"), ("decode_share", "decode share", ".0%"),
                 ("decode_exact_ms", "exact ms", ".0f"), ("decode_all_ms", "decode all ms", ".0f"),
                 ("long_vs_short", "vs short", ".2f")])  # fmt: skip
    save(args.out, rows, frames=16, backbone=f"{args.backbone} shape (random weights)",
         precision=detector.precision)  # fmt: skip


if __name__ == "__main__":
    main()
