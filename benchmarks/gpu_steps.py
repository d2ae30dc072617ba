"""The steps of bench_gpu.py, one function each: each measures one thing and returns its
figures (bench_gpu.py orders them, keeps to the time budget and writes the JSON)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from common import photo

from miragedet import MiraGe, ModelConfig, load_backbone

ROOT = Path(__file__).resolve().parents[1]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_tflops(device: torch.device, n: int) -> float:
    """bf16 (GPU) or fp32 (CPU) matmul rate, TFLOP/s: the ceiling the forward is held against."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 2 * n**3 * 10 / (time.perf_counter() - start) / 1e12


def forward_figures(checkpoint: Path, device: torch.device, batch: int) -> dict:
    """ms/image of the detector's forward (the precision auto picks), FLOPs/image, attention."""
    from torch.utils.flop_counter import FlopCounterMode

    from miragedet.inference.detector import load_detector

    detector = load_detector(str(checkpoint), "torch", device=str(device), batch_size=batch)
    size = detector.preprocess.image_size
    pixels = torch.randn(batch, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter:  # (its module hooks need autograd on)
        detector.model(pixels[:1])
    flops = counter.get_total_flops()
    with torch.inference_mode():
        for _ in range(3):
            detector.model(pixels)
        sync()
        repeats = 10
        start = time.perf_counter()
        for _ in range(repeats):
            detector.model(pixels)
        sync()
    ms = (time.perf_counter() - start) / (repeats * batch) * 1e3
    attention = getattr(detector.model.clip.config, "_attn_implementation", None)
    return {"ms_per_image": ms, "gflop_per_image": flops / 1e9, "precision": detector.precision,
            "attention": attention, "batch": batch}  # fmt: skip


def compiled_figures(checkpoint: Path, device: torch.device, batch: int, modes: list[str]) -> dict:
    """The forward compiled by torch.compile in each mode (default: inductor's fused kernels;
    reduce-overhead: the same replayed as a CUDA graph, one launch per batch): compile seconds,
    ms/image at ``batch`` and the largest change of p(class) against the eager forward. What
    decides whether `--backend auto` should weigh them on a GPU (docs/performance.md)."""
    from miragedet.inference.detector import load_detector

    detector = load_detector(str(checkpoint), "torch", device=str(device), batch_size=batch)
    size = detector.preprocess.image_size
    pixels = torch.randn(batch, 3, size, size, device=device,
                         generator=torch.Generator(device).manual_seed(0))  # fmt: skip
    out: dict = {}
    with torch.inference_mode():
        eager = detector.model(pixels).probs.float().cpu()
        for mode in modes:
            try:
                forward = torch.compile(detector.model, mode=None if mode == "default" else mode)
                mark = getattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)
                start = time.perf_counter()
                for _ in range(3):  # the compile, then the CUDA graph's recording
                    mark()
                    probs = forward(pixels).probs.float().cpu()
                sync()
                compile_s = time.perf_counter() - start
                repeats = 10
                start = time.perf_counter()
                for _ in range(repeats):
                    mark()
                    forward(pixels)
                sync()
                ms = (time.perf_counter() - start) / (repeats * batch) * 1e3
                out[mode] = {"compile_s": round(compile_s, 1), "ms_per_image": round(ms, 4),
                             "parity": float((probs - eager).abs().max())}  # fmt: skip
            except Exception as exc:  # a mode inductor cannot run here: said, the rest goes on
                out[mode] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            torch._dynamo.reset()
    return out


def auto_race(checkpoint: Path, device: torch.device, batch: int) -> dict:
    """What `--backend auto` chooses on ``device`` for a job of a million images, measured now
    (an empty engine cache): on a GPU the GPU race of inference/engine.py (PyTorch against
    torch.compile as CUDA graphs, and ONNX Runtime's CUDA provider where installed)."""
    from miragedet.inference.engine import choose

    with tempfile.TemporaryDirectory() as cache:
        os.environ["MIRAGEDET_CACHE"] = cache
        try:
            start = time.perf_counter()
            choice = choose(checkpoint, batch_size=batch, device=str(device), images=1e6)
        finally:
            os.environ.pop("MIRAGEDET_CACHE")
    return {"backend": choice.backend, "reason": choice.reason, "measured": choice.measured,
            "compile_s": choice.compile_s, "compile_note": choice.compile_note,
            "parity": choice.parity, "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def _write_photo(job: tuple) -> None:
    path, width, height, seed, fmt = job
    image = photo(width, height, seed)
    if fmt == "JPEG":
        image.save(path, quality=90)
    else:
        image.save(path, compress_level=1)


def make_data(folder: Path, n: int, distinct: int, sizes: list, fmt: str, workers: int) -> Path:
    """``n`` files cycling over ``distinct`` photo-like images (decoding costs the same for a
    copy; making each anew would cost more than the run)."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".jpg" if fmt == "JPEG" else ".png"
    jobs = [(folder / f"base{i:04d}{suffix}", *sizes[i % len(sizes)], i, fmt)
            for i in range(distinct)]  # fmt: skip
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_photo, [j for j in jobs if not j[0].exists()]))
    for i in range(n):
        target = folder / f"img{i:06d}{suffix}"
        if not target.exists():
            try:
                os.link(jobs[i % distinct][0], target)  # the same bytes, no disk written
            except OSError:
                shutil.copyfile(jobs[i % distinct][0], target)
    for job in jobs:
        job[0].unlink(missing_ok=True)
    return folder


def pipeline_rate(checkpoint: Path, files: list[str], batch: int | None) -> tuple[float, dict]:
    """images/s of the scoring pipeline as `detect` runs it (defaults), after a warm-up pass."""
    from miragedet.inference.detector import load_detector

    detector = load_detector(str(checkpoint), "auto", batch_size=batch, notify=lambda m: None)
    detector.score(files[: detector.batch_size * 2], provenance=True)  # warm-up
    sync()
    start = time.perf_counter()
    scored = detector.score(files, provenance=True)
    sync()
    seconds = time.perf_counter() - start
    failed = sum(not p.ok for p in scored)
    info = detector.info()
    return len(files) / seconds, {"failed": failed, "batch": detector.batch_size,
                                  "decode": info["decode"], "device": info["device"],
                                  "decode_threads": detector.decode_threads}  # fmt: skip


def breakdown(checkpoint: Path, files: list[str]) -> dict:
    """What holds the detect pipeline back: its rate with GPU decoding on/off and provenance
    on/off, stage 1 alone (the decode pool's work without the forward) and the GPU decoder alone
    (images/s each, after a warm-up pass)."""
    from miragedet.data.gpu_decode import GPU_DECODE_ENV
    from miragedet.inference.detector import load_detector
    from miragedet.inference.pipeline import prepare, staged_batches
    from miragedet.provenance.verdict import read_provenance

    out: dict = {}
    for gpu_decode in ("1", "0"):
        os.environ[GPU_DECODE_ENV] = gpu_decode
        detector = load_detector(str(checkpoint), "torch", notify=lambda m: None)
        name = "gpu-decode" if detector.gpu_decoder is not None else "cpu-decode"
        for provenance in (False, True):
            detector.score(files[:512], provenance=provenance)
            sync()
            start = time.perf_counter()
            detector.score(files, provenance=provenance)
            sync()
            rate = len(files) / (time.perf_counter() - start)
            out[f"detect {name}, provenance {'on' if provenance else 'off'}"] = round(rate, 1)

            def work(pair, provenance=provenance, detector=detector):
                prepared = prepare(detector, pair[1])
                if provenance:
                    read_provenance(pair[1], None, False)
                return prepared

            start = time.perf_counter()
            for _ in staged_batches(enumerate(files), work, 256, detector.decode_threads):
                pass
            rate = len(files) / (time.perf_counter() - start)
            out[f"stage 1 alone {name}, provenance {'on' if provenance else 'off'}"] = round(
                rate, 1
            )
        if detector.gpu_decoder is None:  # is the forward's thread starved of the GIL by the
            interval = sys.getswitchinterval()  # decode pool (a convoy)? 5 ms -> 0.5 ms
            sys.setswitchinterval(0.0005)
            start = time.perf_counter()
            detector.score(files, provenance=False)
            sync()
            out[f"detect {name}, provenance off, GIL switch interval 0.5 ms"] = round(
                len(files) / (time.perf_counter() - start), 1
            )
            sys.setswitchinterval(interval)
        del detector
    os.environ.pop(GPU_DECODE_ENV, None)
    out.update(decoders_alone(checkpoint, files))
    return out


def decoders_alone(checkpoint: Path, files: list[str]) -> dict:
    """images/s of each GPU JPEG decoder alone (decode, orient, resize, crop, normalise) and of
    `detect` with it ($MIRAGEDET_GPU_DECODER), provenance off; why not where one is missing."""
    from miragedet.data.gpu_decode import DECODERS, GPU_DECODER_ENV, GpuJpegDecoder, probe
    from miragedet.data.transforms import Preprocess
    from miragedet.inference.detector import load_detector

    if not torch.cuda.is_available():
        return {}
    out: dict = {}
    jobs = [probe(Path(f).read_bytes(), 10**9) for f in files[:512]]
    jobs = [j for j in jobs if j is not None]
    for backend in DECODERS:
        try:
            decoder = GpuJpegDecoder(torch.device("cuda"), Preprocess(), backend=backend)
        except Exception as exc:
            out[f"GPU decoder {backend}"] = f"not available: {type(exc).__name__}: {exc}"[:200]
            continue
        decoder(jobs[:64])
        sync()
        start = time.perf_counter()
        for k in range(0, len(jobs), 256):
            decoder(jobs[k : k + 256])
        sync()
        out[f"GPU decoder {backend} alone"] = round(len(jobs) / (time.perf_counter() - start), 1)
        os.environ[GPU_DECODER_ENV] = backend
        detector = load_detector(str(checkpoint), "torch", notify=lambda m: None)
        detector.score(files[:512], provenance=False)
        sync()
        start = time.perf_counter()
        detector.score(files, provenance=False)
        sync()
        out[f"detect with {backend}, provenance off"] = round(
            len(files) / (time.perf_counter() - start), 1
        )
        del detector
    os.environ.pop(GPU_DECODER_ENV, None)
    return out


def score_dataset_rate(checkpoint: Path, folder: Path, out: Path) -> float:
    from miragedet.inference.score_dataset import score_dataset

    shutil.rmtree(out, ignore_errors=True)
    report = score_dataset(str(folder), out, str(checkpoint), engine="local", shard_size=4096,
                           provenance=True)  # fmt: skip
    return report.images_per_s


def evaluate_rate(checkpoint: Path, folder: Path, device: torch.device, batch: int | None
                  ) -> tuple[float, int]:  # fmt: skip
    """images/s of evaluate's scoring path (score_samples) with evaluate's defaults: decode
    threads for the device, batch from the GPU's free memory unless ``batch`` is given; and the
    batch."""
    from miragedet.data.layouts import Sample
    from miragedet.evaluation.scores import score_samples
    from miragedet.inference.pipeline import batch_for
    from miragedet.inference.precision import apply, resolve
    from miragedet.model.mirage import load_pretrained

    model = load_pretrained(str(checkpoint), device=device)
    model = apply(model, resolve("auto", device).precision)
    batch, _ = batch_for(model, device, model.backbone.preprocess.image_size, batch, 64)
    samples = [Sample(str(p), i % 2, "bench") for i, p in enumerate(sorted(folder.iterdir()))]
    score_samples(model, samples[: batch * 2], batch_size=batch, workers=None)  # warm-up
    sync()
    start = time.perf_counter()
    scores = score_samples(model, samples, batch_size=batch, workers=None)
    sync()
    assert not scores.errors, list(scores.errors.items())[:3]
    return len(samples) / (time.perf_counter() - start), batch


def serve_figures(checkpoint: Path, clients: int, seconds: float, size: tuple[int, int]) -> dict:
    """`miragedet serve` with its defaults (device auto, batch from free memory) under
    ``clients`` concurrent clients, each posting one photo-like JPEG of ``size`` per request for
    ``seconds``: images/s, p50/p99 latency, status counts (the issue's 64 clients of 1 MP)."""
    import asyncio
    import io

    import httpx
    import numpy as np
    from bench_load import KEY, _free_port

    bodies = []
    for seed in range(8):
        buffer = io.BytesIO()
        photo(*size, seed).save(buffer, "JPEG", quality=90)
        bodies.append(buffer.getvalue())
    port = _free_port()
    command = [sys.executable, "-m", "miragedet", "serve", "-m", str(checkpoint), "--host",
               "127.0.0.1", "--port", str(port), "--log-level", "warning",
               "--max-queue", str(4 * clients)]  # fmt: skip
    env = dict(os.environ, MIRAGEDET_API_KEY=KEY,
               PYTHONPATH=f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}")  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the server did not start: {server.stderr.read()[-1500:]!r}")
            time.sleep(0.5)
        log: list = []

        async def client(index: int, until: float) -> None:
            async with httpx.AsyncClient(headers={"X-API-Key": KEY}, timeout=120) as http:
                k = index
                while time.perf_counter() < until:
                    k += 1
                    start = time.perf_counter()
                    try:
                        files = [("files", (f"{k}.jpg", bodies[k % len(bodies)], "image/jpeg"))]
                        r = await http.post(f"{base}/v1/detect", files=files)
                        status = r.status_code
                    except httpx.HTTPError as exc:
                        status = f"error:{type(exc).__name__}"
                    log.append((status, time.perf_counter() - start))
                    if status == 503:
                        await asyncio.sleep(0.05)

        async def run() -> float:
            warm_until = time.perf_counter() + min(5.0, seconds / 3)  # first batches, CUDA warm
            await asyncio.gather(*[client(i, warm_until) for i in range(clients)])
            log.clear()
            begin = time.perf_counter()
            await asyncio.gather(*[client(i, begin + seconds) for i in range(clients)])
            return time.perf_counter() - begin

        elapsed = asyncio.run(run())
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    ok = [t for status, t in log if status == 200]
    counts: dict = {}
    for status, _ in log:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return {
        "clients": clients,
        "image_size": list(size),
        "seconds": round(elapsed, 1),
        "images_per_s": round(len(ok) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ok, 50)) * 1000, 1) if ok else None,
        "p99_ms": round(float(np.percentile(ok, 99)) * 1000, 1) if ok else None,
        "status_counts": counts,
        "errors": sum(1 for status, _ in log if status != 200 and status != 503),
    }


def train_figures(backbone: str, folder: Path, out: Path, batch: int, epochs: int) -> dict:
    """The trainer's own figures for its last epoch (the first one warms the GPU up), with
    train's defaults (loader workers for the device)."""
    from miragedet.training.config import TrainConfig
    from miragedet.training.trainer import Trainer

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    config = TrainConfig(data=str(folder), backbone=backbone, method="mirage", epochs=epochs,
                         batch_size=batch, amp="auto", workers=None,
                         output=str(out), log_every=1000)  # fmt: skip
    result = Trainer(config).fit()
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "images_per_s": getattr(result, "images_per_s", None),
        "data_wait_share": getattr(result, "data_wait_share", None),
        "peak_gib": peak,
    }


def saved_backbone(checkpoint: Path) -> Path:
    """A checkpoint on the same backbone weights saved as a local folder (config.json,
    model.safetensors, tokenizer and preprocessor files: what `huggingface-cli download` gives),
    so that loading it reads weights instead of drawing a random CLIP."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    target = checkpoint.with_name(checkpoint.name + "-saved")
    if (target / "config.json").is_file():
        return target
    backbone = load_backbone(
        json.loads((checkpoint / "config.json").read_text())["backbone"]["source"]
    )
    folder = checkpoint.with_name(checkpoint.name + "-clip")
    size = backbone.preprocess.image_size
    backbone.model.save_pretrained(str(folder))
    backbone.tokenizer.save_pretrained(str(folder))
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    processor.save_pretrained(str(folder))
    MiraGe(load_backbone(str(folder)), ModelConfig.for_method("mirage")).save_pretrained(
        str(target)
    )
    return target


def start_up(checkpoint: Path, image: Path) -> dict:
    """Seconds for one image through `miragedet detect` (the second of two runs), on the
    checkpoint as it is (a random backbone, drawn at load) and on its backbone saved as a folder
    (weights read, as a downloaded CLIP's are), and the floor: python importing torch and
    miragedet and initialising CUDA (when there is a GPU)."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}")
    floor_code = (
        "import torch, miragedet.inference.detector\n"
        "torch.zeros(1, device='cuda') if torch.cuda.is_available() else None"
    )
    times = {}
    for name, command in (
        ("floor_s", [sys.executable, "-c", floor_code]),
        *[
            (
                name,
                [
                    sys.executable,
                    "-m",
                    "miragedet",
                    "detect",
                    str(image),
                    "-m",
                    str(ckpt),
                    "-f",
                    "json",
                ],
            )
            for name, ckpt in (
                ("one_image_s", checkpoint),
                ("one_image_saved_backbone_s", saved_backbone(checkpoint)),
            )
        ],
    ):  # each run once untimed first: files in the page cache, the engine choice cached
        subprocess.run(command, capture_output=True, env=env, timeout=600)
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        times[name] = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{name}: {done.stderr[-2000:]}")
        if name == "one_image_s":
            times["header"] = done.stderr.strip().splitlines()[0][:300]
    times["ratio"] = times["one_image_s"] / times["floor_s"]
    times["ratio_saved_backbone"] = times["one_image_saved_backbone_s"] / times["floor_s"]
    return times
