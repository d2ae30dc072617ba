#!/usr/bin/env bash
# The train -> evaluate walk-through of docs/reproduce.md on a generated GenImage-style set,
# with the random-weight tiny CLIP (about 40 s on 2 CPU cores). Usage: examples/synthetic_demo.sh [DIR]
set -euo pipefail
dir=${1:-synthetic-demo}
mkdir -p "$dir"
miragedet make-synthetic "$dir/data" --layout genimage \
  --generators grid-2,grid-2-faint,grid-2-strong,grid-4 --n-per-class 1000
miragedet train "$dir/data" --subsets grid-2 --backbone tiny --lr 0.02 --batch-size 64 \
  --epochs 10 --depth 2 --bank-size 256 --output "$dir/run"
miragedet evaluate --model "$dir/run/best" "$dir/data" --output "$dir/eval" \
  --degrade jpeg:95 --degrade jpeg:75 --degrade blur:0.5 --degrade blur:1 \
  --degrade downsample:24 --degrade downsample:16
miragedet analyze --model "$dir/run/best" --data "$dir/data" --compare zero-shot \
  --output "$dir/analysis" --max-points 800
echo "report: $dir/eval/report.md; embedding analysis: $dir/analysis/analysis.md"
