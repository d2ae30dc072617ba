"""Every benchmark script runs from a clone and writes its JSON (figures are never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"

CASES = {
    "bench_synthetic.py": ["--size", "32", "--n-per-class", "4", "--repeats", "1"],
    "bench_gpu.py": ["--small", "--work", "work"],
    "bench_forward.py": ["--backbones", "tiny", "--batch", "2", "--repeats", "1", "--onnx"],
    "bench_startup.py": ["--repeats", "1"],
    "bench_adapt.py": [
        "--backbones",
        "tiny",
        "--shots",
        "4",
        "--size",
        "32",
        "--memory",
        "8",
        "--held-out",
        "4",
        "--steps",
        "2",
    ],
    "bench_train.py": ["--backbones", "tiny", "--batch", "4", "--repeats", "1"],
    "bench_pipeline.py": ["--backbones", "tiny", "--images", "4", "--batch", "2"],
    "bench_decode.py": ["--backbone", "tiny", "--images", "4"],
    "bench_memory.py": ["--images", "1200", "--distinct", "8"],
    "bench_stability.py": ["--backbones", "tiny", "--images", "2", "--repeats", "1"],
    "bench_formats.py": ["--backbone", "tiny", "--sizes", "1", "--repeats", "1"],
    "bench_provenance.py": ["--backbone", "tiny", "--sizes", "1", "--images", "2"],
    "bench_tiles.py": ["--backbones", "tiny", "--counts", "1,4", "--tiles", "8", "--repeats", "1"],
    "bench_adversarial.py": [
        "--backbones",
        "tiny",
        "--batch",
        "2",
        "--train-batch",
        "4",
        "--repeats",
        "1",
    ],
    "aggregate_study.py": ["--images", "6", "--max-tiles", "4,8", "--steps", "3"],
    "bench_video.py": [
        *("--backbone", "tiny", "--height", "144", "--short", "2", "--long", "30"),
        *("--repeats", "1"),
    ],
}


def test_every_benchmark_is_covered():
    assert set(CASES) | {"bench_scoring.py", "bench_load.py"} >= {
        p.name for p in BENCH.glob("bench_*.py")
    }


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs_and_writes_json(script, tmp_path):
    out = tmp_path / "out.json"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *CASES[script], "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["rows"] and data["rows"][0]
    assert "torch" in data.get("machine", data.get("meta", {}))


def test_cost_model_runs_on_the_kept_results():
    command = [sys.executable, str(BENCH / "cost_model.py"), "--results", str(BENCH / "results")]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "GPUs to score" in done.stdout and "GPU memory" in done.stdout
    faster = subprocess.run(
        [*command, "--gpu-forward-ms", "1.78"],
        capture_output=True,
        text=True,
        timeout=300,
    )

    # half the forward time, half the GPUs (42 -> 21 for a billion images a day)
    def gpus(text):
        return int(next(line for line in text.splitlines() if "GPUs to score" in line).split()[-1])

    assert gpus(faster.stdout) * 2 == gpus(done.stdout)


def test_gpu_bench_keeps_to_its_time_budget(tmp_path):
    """A bench_gpu.py run past its --budget starts no further step, says so per step and still
    writes the figures it has (a GPU call cut short at the device's limit keeps them)."""
    out = tmp_path / "out.json"
    command = [sys.executable, str(BENCH / "bench_gpu.py"), "--small", "--work", "work",
               "--budget", "0", "--skip", "train", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="2"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["complete"] and data["forward_peak_share"] > 0
    assert data["steps"]["train"] == "skipped: --skip"
    assert data["steps"]["detect"].startswith("skipped: time budget")
    assert "detect_jpeg_img_s" not in data and "| detect pipeline, JPEG" in done.stdout
    bad = subprocess.run([*command[:2], "--small", "--skip", "nonsense"], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "unknown step" in bad.stderr
