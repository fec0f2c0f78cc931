#!/usr/bin/env bash
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
part kern 200 bash bench/device.sh python3 -m bench.profile_step --kernels
grep -v "^\[\|^ *$\|Warning\|_warn_once" "$OUT/kern.log" | cut -c1-190
