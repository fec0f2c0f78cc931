#!/usr/bin/env bash
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
part l2 240 bash bench/device.sh python3 -m bench.l2_prefetch --out "$OUT/l2"
grep -v "^\[\|^ *$" "$OUT/l2.log" | cut -c1-200 | tail -60
