#!/usr/bin/env bash
# The next GPU call, ready to run (~9 minutes of a 10-minute call): what session 7 left unmeasured.
#   run: bash bench/next_gpu_call.sh   kind: nvidia-h200   carry: [".whl"]
# 1. The precompile test: session 7's last change to the compile pass (the profiling prefill only
#    when it sizes the KV cache, all decode batch sizes in eager mode) came after its last GPU run.
# 2. 1.5B TTFT P99 at 64 streams with a larger prompt-chunk cap while decoding (768 vs 512; 768 +
#    64 decodes still fits the largest mixed-step graph, 1,024 tokens): the target sat at the edge
#    in session 7 (2 of 9 runs under 300 ms), and 256 cost 200 ms of it.
# 3. The 7B shape with the GPU pods' settings and session 7's start-up: cold start with an empty
#    kernel cache, then batch-1 decode, offline and 64 streams online, then a cold start with the
#    cache warm. Its last full run was session 5's. Last, as writing its 15 GB checkpoint is slow:
#    each part prints its figures as it ends, and JSON is written per case.
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
nvidia-smi -L
bash bench/device.sh true > /dev/null
part precompile 120 bash bench/device.sh python3 -m pytest -q -p no:cacheprovider -p gpu_instafail \
  tests/server/test_kernel_precompile.py
bash bench/device.sh python3 -c "from pathlib import Path; from bench.shapes import write_checkpoint; \
write_checkpoint(Path('/tmp/bench-1.5b'), '1.5b')" > /dev/null
export R1SERVE_ENGINE_PROCESS=true R1SERVE_ASYNC_SCHEDULING=true R1SERVE_API_SERVERS=2
for cap in 768 512; do
  R1SERVE_MAX_PREFILL_TOKENS_WHEN_DECODING=$cap part "cap$cap" 75 bash bench/device.sh \
    python3 -m bench --shape 1.5b --cases online --levels 64 --requests-per-stream 8 --out "$OUT/cap$cap"
  grep -v httpx "$OUT/cap$cap.log" | grep -A4 "online: streaming" | grep "│"
done
bash bench/device.sh python3 -c "from pathlib import Path; from bench.shapes import write_checkpoint; \
write_checkpoint(Path('/tmp/bench-7b'), '7b')" > /dev/null
export TRITON_CACHE_DIR=/tmp/triton-shared  # as the pods' shared volume: empty at first
part full_7b 200 bash bench/device.sh python3 -m bench --shape 7b --cases coldstart,decode,offline,online \
  --async-scheduling --levels 64 --out "$OUT/full_7b"
grep -v httpx "$OUT/full_7b.log" | grep "cold start\|│"
part warm_7b 60 bash bench/device.sh python3 -m bench --shape 7b --cases coldstart --out "$OUT/warm_7b"
grep -h "cold start" "$OUT/warm_7b.log"
# only a few files come back from a call: keep the JSONs and the 7B's printed tables
rm -f "$OUT"/*/server.log "$OUT"/*/*.png "$OUT"/cap*.log "$OUT"/warm_7b.log
ls -R "$OUT"
