"""P2: end-to-end folder scoring, `miragedet detect` against transformers' pipeline.

Both score the same folder of 1-4 MP photo-like JPEGs with the same random-weight CLIP (same
shape, same weights, same prompts "a photo of a Real/Fake.") on the same threads, and write one
JSON line per image. The pipeline (`zero-shot-image-classification`) decodes every image at full
size, preprocesses with numpy and re-runs the text encoder for every batch; `detect` decodes
JPEGs at reduced scale in parallel threads and reuses the text features. The table also shows
where the time goes (decode + preprocess vs the forward), which is what bounds the ratio: when
the forward dominates (a large backbone on a CPU) no decoder can win much.
    python benchmarks/bench_pipeline.py [--backbones tiny,vit-b-32] [--images 32]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import save, table, write_jpegs

from miragedet import MiraGe, ModelConfig, load_backbone
from miragedet.apps.detect import run_detect
from miragedet.inference.detector import Detector, load_detector
from miragedet.inference.precision import resolve

SIZES = [(1280, 960), (1600, 1200), (2048, 1536), (2304, 1728)]  # 1.2 to 4 MP


def pipeline_for(backbone):
    from transformers import pipeline
    from transformers.models.clip import CLIPImageProcessorPil

    p = backbone.preprocess
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": p.resize_shortest},
        crop_size={"height": p.image_size, "width": p.image_size},
        image_mean=list(p.mean),
        image_std=list(p.std),
    )
    return pipeline(
        "zero-shot-image-classification",
        model=backbone.model,
        tokenizer=backbone.tokenizer,
        image_processor=processor,
        device="cpu",
    )


def run_pipeline(pipe, paths: list[str], out: Path, batch: int) -> None:
    results = pipe(
        paths,
        candidate_labels=["Real", "Fake"],
        hypothesis_template="a photo of a {}.",
        batch_size=batch,
    )
    with out.open("w") as handle:
        for path, result in zip(paths, results, strict=True):
            fake = next(r["score"] for r in result if r["label"] == "Fake")
            handle.write(json.dumps({"path": path, "fake_prob": fake}) + "\n")


def measure(name: str, paths: list[str], args: argparse.Namespace, tmp: Path) -> list[dict]:
    backbone = load_backbone(f"random:{name}")
    model = MiraGe(backbone, ModelConfig.for_method("zero-shot", template="a photo of a {}."))
    rows = []
    pixels = None
    variants = [
        ("miragedet detect --precision bf16", True, "bf16"),
        ("miragedet detect --precision int8", True, "int8"),
        (f"miragedet detect (auto: {resolve('auto', 'cpu').precision})", True, "auto"),
        ("miragedet detect --precision fp32", True, "fp32"),
        ("miragedet detect (full decode)", False, "fp32"),  # last: its rows are compared below
    ]
    checkpoint = tmp / f"ckpt-{name}"
    model.save_pretrained(str(checkpoint))
    makers = [
        (label, lambda d=draft, p=precision: Detector(
            model, batch_size=args.batch, threads=args.threads, exact_decode=not d, precision=p))
        for label, draft, precision in variants
    ]  # fmt: skip
    # the default path: `miragedet detect -m CKPT` with no engine or precision named (first use:
    # the ONNX export and the measurement, timed apart and reported)
    makers.insert(0, ("miragedet detect (defaults)", lambda: load_detector(
        str(checkpoint), batch_size=args.batch, threads=args.threads)))  # fmt: skip
    for label, make in makers:
        start = time.perf_counter()
        detector = make()
        first_use = time.perf_counter() - start
        if detector.engine is not None:
            label = f"{label}: {detector.engine.backend} {detector.precision}"
        run_detect(detector, paths[: args.batch], output=tmp / "warm.jsonl", fmt="jsonl")
        start = time.perf_counter()
        run_detect(detector, paths, output=tmp / "detect.jsonl", fmt="jsonl")
        total = time.perf_counter() - start
        start = time.perf_counter()
        pixels = torch.stack([detector._prepare(p) for p in paths])
        decode = time.perf_counter() - start
        start = time.perf_counter()
        detector.forward_tensors(pixels)
        forward = time.perf_counter() - start
        rows.append({"backbone": name, "scorer": label, "total_s": total})
        if detector.engine is not None:
            rows[-1].update(first_use_s=first_use, engine=detector.engine.describe())
        rows[-1].update(
            decode_ms=decode / len(paths) * 1000, forward_ms=forward / len(paths) * 1000
        )
    pipe = pipeline_for(backbone)
    run_pipeline(pipe, paths[: args.batch], tmp / "warm.jsonl", args.batch)
    start = time.perf_counter()
    run_pipeline(pipe, paths, tmp / "pipeline.jsonl", args.batch)
    total = time.perf_counter() - start
    rows.append({"backbone": name, "scorer": "transformers pipeline", "total_s": total})
    ours = {
        json.loads(line)["path"]: json.loads(line)["fake_prob"]
        for line in (tmp / "detect.jsonl").read_text().splitlines()
    }
    theirs = [json.loads(line) for line in (tmp / "pipeline.jsonl").read_text().splitlines()]
    rows[-1]["max_abs_dp_vs_full_decode"] = max(
        abs(r["fake_prob"] - ours[r["path"]]) for r in theirs
    )
    for row in rows:
        row["images_per_s"] = len(paths) / row["total_s"]
        row["p2_ratio"] = total / row["total_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", default="tiny,vit-b-32")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=4, help="detect's decode threads")
    parser.add_argument("--out", default="bench_pipeline.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from transformers.utils import logging

    logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MIRAGEDET_CACHE"] = str(Path(tmp) / "cache")  # a first use, measured
        os.environ.pop("MIRAGEDET_BACKEND", None)
        folder = write_jpegs(Path(tmp) / "images", args.images, SIZES)
        paths = sorted(str(p) for p in folder.iterdir())
        rows = []
        for name in args.backbones.split(","):
            rows += measure(name, paths, args, Path(tmp))
    print(
        f"P2: {args.images} JPEGs of 1.2-4 MP, batch {args.batch}, {torch.get_num_threads()} "
        "torch threads (ratio = pipeline time / this scorer's time; target >= 3)"
    )
    table(
        rows,
        [
            ("backbone", "backbone", ""),
            ("scorer", "scorer", ""),
            ("images_per_s", "images/s", ".1f"),
            ("p2_ratio", "ratio", ".2f"),
            ("decode_ms", "decode+prep ms/img", ".1f"),
            ("forward_ms", "forward ms/img", ".1f"),
            ("max_abs_dp_vs_full_decode", "max |dp| vs full", ".1e"),
            ("first_use_s", "first use s", ".1f"),
        ],
    )
    for row in rows:
        if row.get("engine"):
            print(f"{row['backbone']}: the default engine: {row['engine']}")
    save(args.out, rows, images=args.images, batch=args.batch)


if __name__ == "__main__":
    main()
