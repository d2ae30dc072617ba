"""P1: MiraGe's inference forward against the bare CLIP vision tower, same batch and threads.

The bare tower (embeddings -> encoder -> pooled -> projection) is the physical limit: MiraGe
adds n_ctx prompt tokens to the first J vision layers and a 2-column matmul with text features
that are computed once per loaded model. The ratio bare/MiraGe is the share of the limit reached
(target >= 0.97). Also measured: bf16 autocast (CPU or CUDA), fp16 on CUDA, and the exported
ONNX graph on ONNX Runtime (--onnx).
    python benchmarks/bench_forward.py [--backbones tiny,vit-b-32,vit-l-14] [--batch 8]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import save, table, timed

from miragedet import MiraGe, ModelConfig, load_backbone


def bare_tower(clip, pixels: torch.Tensor) -> torch.Tensor:
    """What CLIP itself computes for an image embedding."""
    pooled = clip.vision_model(pixel_values=pixels).pooler_output
    return torch.nn.functional.normalize(clip.visual_projection(pooled), dim=-1)


def profile_forward(fn, dtype, device: torch.device, title: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
    ):
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                fn()
    print(f"profile of MiraGe's forward ({title}):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def measure(name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows: list[dict] = []
    backbone = load_backbone(f"random:{name}")
    model = MiraGe(backbone, ModelConfig.for_method("mirage")).to(device).eval()
    size = backbone.preprocess.image_size
    pixels = torch.randn(args.batch, 3, size, size, device=device)

    def pair(first, second, dtype=None) -> tuple[float, float]:
        """Median ms/image of each function, calls alternating so that a slower or faster
        stretch of a shared machine hits both alike."""

        def call(fn) -> float:
            start = time.perf_counter()
            with torch.inference_mode():
                if dtype is None:
                    fn()
                else:
                    with torch.autocast(device.type, dtype=dtype):
                        fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        call(first), call(second)  # warm-up
        times = [(call(first), call(second)) for _ in range(args.repeats)]
        a, b = (float(np.median(t)) / args.batch * 1000 for t in zip(*times, strict=True))
        return a, b

    variants = [("fp32", None), ("bf16 autocast", torch.bfloat16)]
    if device.type == "cuda":
        variants.append(("fp16 autocast", torch.float16))
    vision = backbone.model.config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    bound = tokens / (tokens + model.prompts.n_ctx)  # the extra tokens' share of the work

    def add(label: str, bare: float, mirage: float) -> None:
        rows.append(
            {
                "backbone": name,
                "precision": label,
                "bare_ms_per_image": bare,
                "mirage_ms_per_image": mirage,
                "p1_ratio": bare / mirage,
                "token_bound": bound,
            }
        )

    for label, dtype in variants:
        bare, mirage = pair(lambda: bare_tower(model.clip, pixels), lambda: model(pixels), dtype)
        if args.profile:
            profile_forward(lambda: model(pixels), dtype, device, f"{name}, {label}")
        add(label, bare, mirage)
    halves = [("bf16 weights", torch.bfloat16)]
    if device.type == "cuda":
        halves.append(("fp16 weights", torch.float16))
    for label, dtype in halves:  # the network cast once, as `--precision bf16|fp16` does
        half = copy.deepcopy(model).to(dtype)
        x = pixels.to(dtype)
        add(label, *pair(lambda h=half, x=x: bare_tower(h.clip, x), lambda h=half, x=x: h(x)))
        del half
    if device.type == "cpu":  # `--precision int8`: the vision encoder's linears in int8
        from miragedet.inference.precision import quantize_int8

        quantized = quantize_int8(copy.deepcopy(model))
        add(
            "int8 (dynamic)",
            *pair(lambda q=quantized: bare_tower(q.clip, pixels), lambda q=quantized: q(pixels)),
        )
        del quantized
    if args.compile:  # torch.compile (inductor) of the same forward: steady state and its cost
        for label, dtype in (("torch.compile fp32", None), ("torch.compile bf16 weights",
                                                            torch.bfloat16)):  # fmt: skip
            net = copy.deepcopy(model).to(dtype) if dtype else model
            x = pixels.to(dtype) if dtype else pixels
            compiled = torch.compile(net)
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(x)  # compiles (the first call of this process)
            first = time.perf_counter() - start
            torch._dynamo.reset()  # as a new process would: compiled again, inductor's cache warm
            compiled = torch.compile(net)
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(x)
            warm = time.perf_counter() - start
            tower = torch.compile(lambda n=net, x=x: bare_tower(n.clip, x))
            with torch.inference_mode():
                tower()
            add(label, *pair(tower, lambda c=compiled, x=x: c(x)))
            rows[-1].update(compile_s=first, warm_compile_s=warm)
            with torch.inference_mode():
                drift = (compiled(x).probs.float() - net(x).probs.float()).abs().max().item()
            rows[-1]["max_dp_vs_eager"] = drift
    if args.onnx and device.type == "cpu":
        import onnxruntime

        from miragedet.inference.onnx import OnnxNetwork, export_checkpoint, int8_graph

        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            path = export_checkpoint(tmp)
            onnx = OnnxNetwork.from_pretrained(tmp)
            array = pixels.numpy()
            ort = timed(lambda: onnx.session.run(None, {"pixel_values": array}), args.repeats)
            # ONNX Runtime's own dynamic int8 quantiser on the exported graph, as the engine
            # makes it (inference/onnx.int8_graph: 7-bit weights)
            session = onnxruntime.InferenceSession(
                str(int8_graph(path)), providers=["CPUExecutionProvider"]
            )
            ort8 = timed(lambda: session.run(None, {"pixel_values": array}), args.repeats)
            # --backend auto: what the engine choice picks here (inference/engine.py), and its
            # own measurement of the chosen engine (the cache kept out of the user's)
            from miragedet.inference import engine

            os.environ["MIRAGEDET_CACHE"] = str(Path(tmp) / "cache")
            choice = engine.choose(
                tmp,
                batch_size=args.batch,
                measure_batch=args.batch,
                images=args.job_images,
                precision=args.auto_precision,
            )
            prefix = engine.COMPILED if choice.backend == "compile" else f"{choice.backend} "
            chosen = next(v for k, v in choice.measured.items() if k.startswith(prefix))
            print(f"{name} auto for a job of {args.job_images:g} images: {choice.describe()}")
            if choice.compile_s is not None:
                print(f"{name} auto: torch.compile's first call took {choice.compile_s:.1f} s")
        # against the fp32 bare tower, this backbone's first row
        add("onnxruntime fp32", rows[0]["bare_ms_per_image"], ort / args.batch * 1000)
        add("onnxruntime int8", rows[0]["bare_ms_per_image"], ort8 / args.batch * 1000)
        add(f"auto ({choice.backend})", rows[0]["bare_ms_per_image"], chosen)
        rows[-1].update(auto_reason=choice.describe(), job_images=args.job_images)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", default="tiny,vit-b-32,vit-l-14")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--onnx", action="store_true", help="Also time the ONNX Runtime graph.")
    parser.add_argument(
        "--compile", action="store_true", help="Also time torch.compile (and its compile cost)."
    )
    parser.add_argument(
        "--auto-precision",
        default="auto",
        help="The auto row's --precision (fp32: PyTorch's path on a CPU without native bf16).",
    )
    parser.add_argument(
        "--job-images",
        type=float,
        default=0,
        help="The auto row (with --onnx) chooses for a job of this many images: from "
        "inference.engine.COMPILE_MIN_IMAGES on, torch.compile competes.",
    )
    parser.add_argument(
        "--profile", action="store_true", help="Print the top operators of MiraGe's forward."
    )
    parser.add_argument("--out", default="bench_forward.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for name in args.backbones.split(","):
        rows += measure(name, args, device)
    print(
        f"P1: ms per image, batch {args.batch}, {device}, {torch.get_num_threads()} threads "
        f"(ratio = bare / MiraGe; target >= 0.97; "
        "T/(T+n_ctx) is the bound set by the prompt tokens)"
    )
    table(
        rows,
        [
            ("backbone", "backbone", ""),
            ("precision", "precision", ""),
            ("bare_ms_per_image", "bare tower", ".2f"),
            ("mirage_ms_per_image", "MiraGe", ".2f"),
            ("p1_ratio", "ratio", ".3f"),
            ("token_bound", "tokens T/(T+n_ctx)", ".3f"),
        ],
    )
    for row in rows:
        if "compile_s" in row:
            print(
                f"{row['backbone']} {row['precision']}: first call {row['compile_s']:.1f} s "
                f"(the compile; {row['warm_compile_s']:.1f} s again with inductor's cache warm, "
                "paid by every new process), max |dp| vs eager "
                f"{row['max_dp_vs_eager']:.1e}"
            )
    save(args.out, rows, batch=args.batch, device=str(device))


if __name__ == "__main__":
    main()
