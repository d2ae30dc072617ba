"""A cost model on paper, from the benchmarks' measured per-image costs.

Reads benchmarks/results/*.json (written by run_all.sh) and answers two sizing questions:
how many GPUs train MiraGe (ViT-L/14) on 1.3 M images in one hour, and how many score one
billion images a day. The GPU forward time is the paper's 3.56 ms/image (L40, ViT-L/14) unless
--gpu-forward-ms gives one measured on your card (bench_forward.py --device cuda); the training
step costs P3 times a forward (bench_train.py); JPEG decode runs on CPU cores at the
bench_decode.py rate. Assumes linear scaling over GPUs (data parallel, tiny gradients: the
prompts are ~3.6 M numbers) and full utilisation: multiply by your own efficiency factor.
    python benchmarks/cost_model.py [--results benchmarks/results] [--gpu-forward-ms 3.56]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

PAPER_GPU_MS = 3.56  # ms per image, ViT-L/14 on an NVIDIA L40 (paper, section 6)
DAY_S = 86_400
VIT_L14_PARAMS = 427.6e6  # openai/clip-vit-large-patch14, both towers
#: Training set sizes of the paper's protocols (images per epoch).
PROTOCOLS = {
    "Table 1, GenImage: train SDv1.4 (~162k ai + 162k nature), 10 epochs": 324_000,
    "Table 2, UniversalFakeDetect: ProGAN 20k + 20k, 10 epochs": 40_000,
    "Appendix G.2: ProGAN 100k + 100k, 10 epochs": 200_000,
}


def load(results: Path, name: str) -> dict:
    path = results / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run benchmarks/run_all.sh first")
    return json.loads(path.read_text())


def row(data: dict, **match) -> dict:
    for r in data["rows"]:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    raise SystemExit(f"no row {match} in the results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--gpu-forward-ms", type=float, default=PAPER_GPU_MS)
    parser.add_argument("--train-images", type=float, default=1.3e6)
    parser.add_argument("--score-images-per-day", type=float, default=1e9)
    args = parser.parse_args()
    results = Path(args.results)
    train = row(load(results, "bench_train"), backbone="vit-l-14")
    forward = row(load(results, "bench_forward"), backbone="vit-l-14", precision="fp32")
    decode = row(load(results, "bench_decode"), decode="draft")
    p3 = train["p3_ratio"]
    gpu_ms = args.gpu_forward_ms
    source = "paper, L40" if gpu_ms == PAPER_GPU_MS else "measured"

    train_ms = gpu_ms * p3
    gpus_train = math.ceil(args.train_images * train_ms / 1000 / 3600)
    gpus_score = math.ceil(args.score_images_per_day * gpu_ms / 1000 / DAY_S)
    decode_cores = math.ceil(args.score_images_per_day * decode["ms_per_image"] / 1000 / DAY_S)
    cpu_ms = forward["mirage_ms_per_image"]
    fwd_data = load(results, "bench_forward")
    cpu_threads = fwd_data["machine"]["torch_threads"]
    cpu_machines = math.ceil(args.score_images_per_day * cpu_ms / 1000 / DAY_S)
    half = [
        r for r in fwd_data["rows"] if r["backbone"] == "vit-l-14" and "weights" in r["precision"]
    ]
    half_ms = half[0]["mirage_ms_per_image"] if half else None

    lines = [
        ("GPU forward, ViT-L/14", f"{gpu_ms:.2f} ms/image ({source})"),
        ("train step / forward (P3, measured)", f"{p3:.2f}x -> {train_ms:.2f} ms/image"),
        (
            f"GPUs to train on {args.train_images / 1e6:.1f} M images in 1 h (1 epoch)",
            f"{gpus_train}",
        ),
        (
            "... the paper's 10 epochs in 1 h",
            f"{math.ceil(10 * args.train_images * train_ms / 1000 / 3600)}",
        ),
        (
            f"GPUs to score {args.score_images_per_day:.0e} images/day",
            f"{gpus_score}",
        ),
        (
            "CPU cores to decode them (1-4 MP JPEG, reduced-scale decode)",
            f"{decode_cores} ({decode['ms_per_image']:.1f} ms/image/core, measured)",
        ),
        (
            f"CPU-only alternative: machines like this one ({cpu_threads} threads)",
            f"{cpu_machines} ({cpu_ms:.0f} ms/image, ViT-L/14 fp32, measured)",
        ),
    ]
    if half_ms:
        machines = math.ceil(args.score_images_per_day * half_ms / 1000 / DAY_S)
        lines.append(
            (
                "... bf16 (auto on native-bf16 CPUs only)",
                f"{machines} ({half_ms:.0f} ms/image, measured)",
            )
        )
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")

    # Per paper table: one GPU, batch 128 (the recipe), 10 epochs.
    saved = train["saved_for_backward_mib"] / train["batch"]  # MiB per image, fp32
    weights = VIT_L14_PARAMS * 4 / 2**30
    fp32 = weights + saved * 128 / 1024
    half = weights / 2 + saved * 128 / 2 / 1024
    print()
    print(
        f"Per table, one GPU at {gpu_ms:.2f} ms/image forward, batch 128, 10 epochs; memory = "
        f"weights + activations saved for backward ({saved:.0f} MiB/image fp32, measured):"
    )
    for name, images in PROTOCOLS.items():
        hours = 10 * images * train_ms / 1000 / 3600
        print(f"  {name}: {hours:.1f} h")
    print(
        f"  GPU memory: ~{fp32:.0f} GiB in fp32, ~{half:.0f} GiB with --amp bf16/fp16, "
        f"~{weights + saved * 64 / 1024:.0f} GiB with --grad-accum 2 (fp32)"
    )


if __name__ == "__main__":
    main()
