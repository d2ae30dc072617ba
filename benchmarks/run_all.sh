#!/usr/bin/env bash
# Run every benchmark with the settings docs/performance.md and docs/scaling.md quote; each
# prints its table (kept in benchmarks/results/NAME.txt) and writes benchmarks/results/NAME.json.
# Takes about 50 minutes on a 2-core CPU. Usage: bash benchmarks/run_all.sh [results-folder]
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-results}"
mkdir -p "$out"
run() {
    local name="$1"
    shift
    echo "== $name $*"
    python "$name.py" "$@" --out "$out/$name.json" 2>/dev/null | grep -v '^\[torch.onnx\]' | tee "$out/$name.txt"
}
run bench_forward --backbones tiny,vit-b-32,vit-l-14 --batch 8 --repeats 7 --onnx
run bench_train --backbones tiny,vit-b-32,vit-l-14 --batch 8
run bench_pipeline --backbones tiny,vit-b-32 --images 32
run bench_decode --backbone vit-b-32 --images 32
run bench_formats --backbone vit-b-32 --sizes 1,4,12
run bench_provenance --backbone vit-b-32 --images 16
run bench_memory --images 100000
run bench_scoring --backbone vit-b-32 --images 512 --workers 1,2
run bench_stability --backbones tiny,vit-b-32
run bench_load --clients 32 --duration 60 --max-queue 64
run bench_tiles --backbones vit-b-32,vit-l-14
run aggregate_study --images 200
run bench_adversarial --backbones vit-b-32,vit-l-14
run bench_startup --repeats 5
run bench_adapt --backbones vit-b-32,vit-l-14 --shots 4,16,64
run bench_video --short 10 --long 600 --repeats 3 --all-frames
python cost_model.py --results "$out" | tee "$out/cost_model.txt"
run bench_synthetic --size 224 --n-per-class 256
