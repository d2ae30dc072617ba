#!/usr/bin/env bash
# The figures of docs/trustworthy.md: the audit of a biased and of an aligned synthetic set.
# Usage: examples/trust_demo.sh [DIR]   (a few seconds; exit status 3 of audit-data = shortcut)
set -uo pipefail
dir=${1:-trust-demo}
mkdir -p "$dir"
miragedet make-synthetic "$dir/biased" --shortcut biased --n-per-class 150
miragedet make-synthetic "$dir/aligned" --shortcut aligned --n-per-class 150
miragedet audit-data "$dir/biased" --output "$dir/audit-biased"
echo "audit-data exit status on the biased set: $?"
miragedet audit-data "$dir/aligned" --output "$dir/audit-aligned"
echo "audit-data exit status on the aligned set: $?"
