#!/usr/bin/env bash
# The next GPU call, ready to run (~9 minutes of a 10-minute call): what session 7 left unmeasured.
#   run: bash bench/next_gpu_call.sh   kind: nvidia-h200   carry: [".whl"]
# 1. The 7B shape with the GPU pods' settings and session 7's start-up (kernels compiled on four
#    threads): cold start with an empty kernel cache, then, with it warm, cold start, batch-1 decode,
#    offline and 64 streams online. Its last full run was session 5's, before async scheduling in the
#    pods and two API processes.
# 2. 1.5B TTFT P99 at 64 streams with a larger prompt-chunk cap while decoding (1024 vs 512): the
#    target sat at the edge in session 7 (2 of 9 runs under 300 ms), and 256 cost 200 ms of it.
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
nvidia-smi -L
bash bench/device.sh true > /dev/null
for shape in 1.5b 7b; do
  bash bench/device.sh python3 -c "from pathlib import Path; from bench.shapes import write_checkpoint; \
write_checkpoint(Path('/tmp/bench-$shape'), '$shape')" > /dev/null
done
export R1SERVE_ENGINE_PROCESS=true R1SERVE_ASYNC_SCHEDULING=true R1SERVE_API_SERVERS=2
export TRITON_CACHE_DIR=/tmp/triton-shared  # as the pods' shared volume: empty at first
part cold_7b 120 bash bench/device.sh python3 -m bench --shape 7b --cases coldstart --out "$OUT/cold_7b"
part full_7b 240 bash bench/device.sh python3 -m bench --shape 7b --cases coldstart,decode,offline,online \
  --async-scheduling --levels 64 --out "$OUT/full_7b"
for cap in 1024 512; do
  R1SERVE_MAX_PREFILL_TOKENS_WHEN_DECODING=$cap part "cap$cap" 75 bash bench/device.sh \
    python3 -m bench --shape 1.5b --cases online --levels 64 --requests-per-stream 8 --out "$OUT/cap$cap"
done
grep -h "cold start\|compiled the start-up" "$OUT"/cold_7b.log "$OUT"/cold_7b/server.log "$OUT"/full_7b.log
grep -v httpx "$OUT/full_7b.log" | grep -B2 -A6 "batch-1 decode\|offline: 256\|online: streaming" | grep "│"
for f in cap1024 cap512; do grep -v httpx "$OUT/$f.log" | grep -A6 "online: streaming" | grep "│"; done
# only a few files come back from a call: keep the JSONs and the 7B's printed tables
rm -f "$OUT"/*/server.log "$OUT"/*/*.png "$OUT"/cold_*.log "$OUT"/cap*.log
ls -R "$OUT"
