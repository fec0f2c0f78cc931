#!/usr/bin/env bash
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
part l2 120 bash bench/device.sh python3 -m bench.l2_prefetch --out "$OUT/l2"
grep -v "^\[\|^ *$\|^M=" "$OUT/l2.log" | cut -c1-200 | tail -45
for b in cublaslt cublas; do
  part "prof_$b" 150 bash bench/device.sh python3 -m bench.profile_step --kernels --blas $b
  grep -v "^\[\|^ *$\|Warning\|_warn_once" "$OUT/prof_$b.log" | cut -c1-190
done
