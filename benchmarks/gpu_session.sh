#!/usr/bin/env bash
# A GPU session's checks in one call (docs/performance.md, "On a GPU"), every log in OUT:
#   bash benchmarks/gpu_session.sh OUT [bench_gpu.py options]     e.g. --jpegs 2048 --pngs 1024
# Run from the project root. Wheels the GPU machine's python lacks (../shared/docs/recipes.md,
# "GPU runs": `bash ../shared/tools/gpu-wheels.sh av nvidia-nvimgcodec-cu13 nvidia-nvjpeg`) are
# installed from .whl/ into /tmp/site when that folder exists. Steps: the driver's view of the GPU,
# `miragedet doctor`, then bench_gpu.py (forward, detect, evaluate, score-dataset, train, serve,
# the marked GPU pixel tests, start-up, then the breakdown with each GPU decoder, torch.compile
# and the `auto` race; its JSON is written after each step and no step starts after its
# --budget). Rehearse it on a CPU with `--small --compile` first; a step that fails is logged and
# the next one still runs.
set -u
out="${1:?usage: bash benchmarks/gpu_session.sh OUT [bench_gpu.py options]}"
shift
mkdir -p "$out"
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    >"$out/pip.log" 2>&1 || echo "wheel install failed: see $out/pip.log"
  export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
{ nvidia-smi || echo "no nvidia-smi"; } >"$out/nvidia-smi.txt" 2>&1
timeout 60 python3 -m miragedet doctor >"$out/doctor.txt" 2>&1 || echo "doctor rc $?" >>"$out/doctor.txt"
timeout 480 python3 benchmarks/bench_gpu.py --out "$out/bench_gpu.json" --work /tmp/miragedet-bench-gpu "$@" \
  >"$out/bench_gpu.log" 2>&1
echo "bench_gpu rc $?" | tee -a "$out/bench_gpu.log"
tail -n 25 "$out/bench_gpu.log"
