"""P-GPU: the whole scoring and training path on a GPU, against the GPU's own measured peak.

One command for a GPU machine (random-weight checkpoints of the real shapes; data made here):
    python benchmarks/bench_gpu.py                 # full: ViT-L/14, 1-4 MP JPEGs, 512-px PNGs
    python benchmarks/bench_gpu.py --small         # the same steps tiny, on a CPU (the tests)
Writes benchmarks/results/bench_gpu.json (keys: gpu, forward_peak_share, detect_jpeg_img_s,
detect_png_img_s, score_dataset_img_s, evaluate_img_s, train_img_s, train_data_wait_share,
decode_backend, ...) and prints the table "On a GPU" of docs/performance.md.

Steps (functions in gpu_steps.py), in order, the issue's targets first:
 1. the GPU's bf16 peak: an 8192-cube matmul, 10 timed after 3 warm-ups;
 2. the forward at --batch, bf16 weights: ms/image and share of that peak (FLOPs counted by
    torch.utils.flop_counter on one image);
 3. `detect`: the scoring pipeline as the command runs it (load_detector with its defaults:
    device auto, GPU decoding where installed, provenance on) on 1-4 MP JPEGs and on 512-px
    PNGs, timed after a warm-up pass;
 4. `evaluate`: evaluate's scoring path (evaluation.scores.score_samples);
 5. `score-dataset`: score-dataset's local engine;
 6. `train`: two epochs at --train-batch with --amp auto, the trainer's images/s and data-wait
    share of the last one, peak memory;
 7. `serve`: `miragedet serve` under --clients concurrent clients posting 1 MP JPEGs for 30 s;
 8. `gpu-tests`: the marked GPU tests (GPU-decoded pixels against the CPU's);
 9. `start-up`: one image through `miragedet detect` against the import + CUDA-initialisation
    floor, with the random backbone (drawn at load) and with the same weights saved as a local
    backbone folder (what a downloaded CLIP is);
10. `breakdown`: detect with GPU decoding on/off and provenance on/off, the decode stage alone,
    and each GPU JPEG decoder installed ($MIRAGEDET_GPU_DECODER) alone and in detect;
11. `compile`: the forward compiled by torch.compile, default and reduce-overhead (CUDA graphs):
    compile s, ms/image, change of scores (on a CPU only with --compile);
12. `auto`: what `--backend auto` chooses there for a job of a million images (the GPU race).
Steps 3-12 can be left out with --skip. The JSON is written after every step; a step that would
start after --budget seconds (default 420 on a GPU: the device tool's 10-minute call less its
set-up) is recorded as skipped, and a failing step as its error, so a run cut short still leaves
what it measured (key `steps`; `complete` once all ran).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import machine
from gpu_steps import (
    auto_race,
    breakdown,
    compiled_figures,
    evaluate_rate,
    forward_figures,
    make_data,
    peak_tflops,
    pipeline_rate,
    score_dataset_rate,
    serve_figures,
    start_up,
    train_figures,
)

from miragedet import MiraGe, ModelConfig, load_backbone

ROOT = Path(__file__).resolve().parents[1]
#: Steps --skip can leave out, in the order they run.
OPTIONAL = ("detect", "evaluate", "score-dataset", "train", "serve", "gpu-tests", "start-up",
            "breakdown", "compile", "auto")  # fmt: skip


class Run:
    """The run's figures, written to ``out`` after every step; steps past ``budget`` seconds
    (None: no limit) or in ``skip`` (step: why) are recorded as skipped, a failing one as its
    error."""

    def __init__(self, out: Path, figures: dict, budget: float | None, skip: dict) -> None:
        self.out, self.figures, self.budget, self.skip = out, figures, budget, skip
        self.start = time.perf_counter()
        self.steps: dict[str, str] = {}

    def log(self, key: str, value: object) -> None:
        self.figures[key] = value
        print(f"{key}: {value}", flush=True)

    def step(self, name: str, measure: Callable[[], None]) -> None:
        elapsed = time.perf_counter() - self.start
        if name in self.skip:
            self.steps[name] = f"skipped: {self.skip[name]}"
        elif self.budget is not None and elapsed > self.budget:
            self.steps[name] = f"skipped: time budget of {self.budget:.0f} s spent"
        else:
            try:
                measure()
                self.steps[name] = f"done in {time.perf_counter() - self.start - elapsed:.0f} s"
            except Exception as exc:  # recorded; the steps after it still run
                self.steps[name] = f"failed: {type(exc).__name__}: {exc}"[:800]
        print(f"step {name}: {self.steps[name]}", flush=True)
        self.write(complete=False)

    def write(self, complete: bool) -> None:
        figures = {**self.figures, "steps": self.steps, "complete": complete}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps({"machine": machine(), **figures, "rows": [figures]},
                                       indent=1, default=str))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="Tiny sizes, on a CPU (tests).")
    parser.add_argument("--work", default=None, help="Folder for data and checkpoints.")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_gpu.json"))
    parser.add_argument("--backbone", default=None, help="Default vit-l-14 (tiny with --small).")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--jpegs", type=int, default=3072)
    parser.add_argument("--pngs", type=int, default=2048)
    parser.add_argument("--clients", type=int, default=64, help="serve step: concurrent clients")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--skip", default="", help=f"Comma-separated: {', '.join(OPTIONAL)}.")
    parser.add_argument("--budget", type=float, default=None,
                        help="Seconds after which no step starts (default 420 on a GPU, none on "
                             "a CPU); the steps left are recorded as skipped.")  # fmt: skip
    parser.add_argument(
        "--compile",
        action="store_true",
        help="Time torch.compile's forward on a CPU too (on a GPU it always is).",
    )
    args = parser.parse_args()
    if args.small:
        args.backbone = args.backbone or "tiny"
        args.batch, args.jpegs, args.pngs, args.train_batch = 8, 24, 16, 8
    backbone = f"random:{args.backbone or 'vit-l-14'}"
    skip = dict.fromkeys(filter(None, args.skip.split(",")), "--skip")
    if set(skip) - set(OPTIONAL):
        parser.error(f"--skip: unknown step(s) {sorted(set(skip) - set(OPTIONAL))}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    budget = args.budget if args.budget is not None else (420.0 if device.type == "cuda" else None)
    if not (device.type == "cuda" or args.compile):
        skip.update(dict.fromkeys(("compile", "auto"), "no GPU (--compile runs them on a CPU)"))
    if device.type != "cuda":
        skip["gpu-tests"] = "no GPU"
    work = Path(args.work or Path(tempfile.gettempdir()) / "miragedet-bench-gpu")
    work.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 2
    smi = shutil.which("nvidia-smi")
    if smi and device.type == "cuda":  # the driver, which torch does not report
        query = [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        found = subprocess.run(query, capture_output=True, text=True, timeout=60)
        driver = found.stdout.strip().splitlines()[0] if found.returncode == 0 else None
    else:
        driver = None
    figures: dict = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                     "backbone": backbone, "small": args.small, "nvidia_smi": driver}  # fmt: skip
    run = Run(Path(args.out), figures, budget, skip)
    log = run.log

    checkpoint = work / f"ckpt-{args.backbone or 'vit-l-14'}"
    if not (checkpoint / "config.json").is_file():
        MiraGe(load_backbone(backbone), ModelConfig.for_method("mirage")).save_pretrained(
            str(checkpoint)
        )
    peak = peak_tflops(device, 512 if args.small else 8192)
    log("peak_tflops", round(peak, 1 if peak > 10 else 4))
    forward = forward_figures(checkpoint, device, args.batch)
    log("forward", forward)
    share = forward["gflop_per_image"] / forward["ms_per_image"] / peak  # GFLOP/ms = TFLOP/s
    log("forward_peak_share", round(share, 3))
    run.write(complete=False)

    big = [(1280, 960), (1600, 1200), (2048, 1536), (2304, 1728)]  # 1.2-4.0 MP
    sizes = [(320, 240), (400, 300)] if args.small else big
    jpegs = make_data(work / "jpeg", args.jpegs, 8 if args.small else 256, sizes, "JPEG", cpus)
    png_size = [(64, 64)] if args.small else [(512, 512)]
    pngs = make_data(work / "png/0_real", args.pngs, 8 if args.small else 128, png_size, "PNG",
                     cpus)  # fmt: skip
    jpeg_files = sorted(str(p) for p in jpegs.iterdir())
    png_files = sorted(str(p) for p in pngs.iterdir())
    batch = None if device.type == "cuda" else args.batch  # the defaults: from free memory

    def detect() -> None:
        rate, about = pipeline_rate(checkpoint, jpeg_files, batch)
        log("detect_jpeg_img_s", round(rate, 1))
        log("detect_jpeg", about)
        log("decode_backend", about["decode"])
        rate, about = pipeline_rate(checkpoint, png_files, batch)
        log("detect_png_img_s", round(rate, 1))

    def serve() -> None:
        figures = serve_figures(checkpoint, 4 if args.small else args.clients,
                                5.0 if args.small else 30.0,
                                (320, 240) if args.small else (1152, 864))  # fmt: skip
        log("serve", figures)
        log("serve_img_s", figures["images_per_s"])

    def train() -> None:
        fakes = make_data(work / "png/1_fake", args.pngs, 8 if args.small else 128, png_size,
                          "PNG", cpus)  # fmt: skip
        assert fakes.is_dir()
        figures = train_figures(backbone, work / "png", work / "run", args.train_batch,
                                args.train_epochs)  # fmt: skip
        log("train", figures)
        rate, wait = figures["images_per_s"], figures["data_wait_share"]
        log("train_img_s", None if rate is None else round(rate, 1))
        log("train_data_wait_share", None if wait is None else round(wait, 3))

    def gpu_tests() -> None:  # GPU pixels against the CPU's
        report = work / "gpu_tests.json"
        report.unlink(missing_ok=True)
        env = dict(os.environ, MIRAGEDET_GPU_REPORT=str(report))
        done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p",
                               "no:cacheprovider", "tests/test_gpu_decode.py"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        print(done.stdout[-3000:], done.stderr[-2000:], flush=True)
        found = json.loads(report.read_text()) if report.exists() else {}
        log("gpu_tests", {"passed": done.returncode == 0, **found})

    run.step("detect", detect)

    def evaluate() -> None:
        rate, used = evaluate_rate(checkpoint, jpegs, device, batch)
        log("evaluate_img_s", round(rate, 1))
        log("evaluate_batch", used)

    run.step("evaluate", evaluate)
    run.step(
        "score-dataset",
        lambda: log(
            "score_dataset_img_s", round(score_dataset_rate(checkpoint, jpegs, work / "sd"), 1)
        ),
    )
    run.step("train", train)
    run.step("serve", serve)
    run.step("gpu-tests", gpu_tests)
    run.step("start-up", lambda: log("start_up", start_up(checkpoint, Path(jpeg_files[0]))))
    run.step("breakdown", lambda: log("breakdown", breakdown(checkpoint, jpeg_files)))
    run.step(
        "compile",
        lambda: log(
            "forward_compiled",
            compiled_figures(checkpoint, device, args.batch, ["default", "reduce-overhead"]),
        ),
    )
    run.step("auto", lambda: log("auto_race", auto_race(checkpoint, device, args.batch)))
    run.write(complete=True)
    print(f"wrote {args.out}")
    print_table(figures)


def print_table(f: dict) -> None:
    fw, jpeg = f["forward"], f.get("detect_jpeg") or {}
    serve = f.get("serve") or {}
    rows = [
        ("GPU", f["gpu"] or "none (CPU run)"),
        ("bf16 matmul peak, measured", f"{f['peak_tflops']} TFLOP/s"),
        (f"forward {f['backbone']} {fw['precision']}, batch {fw['batch']}",
         f"{fw['ms_per_image']:.3f} ms/img ({fw['gflop_per_image']:.0f} GFLOP/img, "
         f"{f['forward_peak_share']:.0%} of peak; attention {fw['attention']})"),
        ("detect pipeline, JPEG 1.2-4 MP", f"{f.get('detect_jpeg_img_s', '-')} img/s "
         f"(decode: {f.get('decode_backend', '-')}, batch {jpeg.get('batch', '-')})"),
        ("detect pipeline, 512-px PNG", f"{f.get('detect_png_img_s', '-')} img/s"),
        ("score-dataset (local)", f"{f.get('score_dataset_img_s', '-')} img/s"),
        ("evaluate scoring", f"{f.get('evaluate_img_s', '-')} img/s"),
        ("serve, concurrent clients posting 1 MP JPEGs", f"{f.get('serve_img_s', '-')} img/s "
         f"(p99 {serve.get('p99_ms', '-')} ms, errors {serve.get('errors', '-')})"),
        ("train (amp auto)", f"{f.get('train_img_s', '-')} img/s, data wait "
         f"{f.get('train_data_wait_share', '-')}"),
    ]  # fmt: skip
    if "start_up" in f and "one_image_s" in f["start_up"]:
        s = f["start_up"]
        rows.append(("detect one image", f"{s['one_image_s']:.1f} s (floor {s['floor_s']:.1f} s, "
                                          f"{s['ratio']:.2f}x); backbone from a folder: "
                                          f"{s['one_image_saved_backbone_s']:.1f} s "
                                          f"({s['ratio_saved_backbone']:.2f}x)"))  # fmt: skip
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
