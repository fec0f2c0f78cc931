#!/usr/bin/env bash
# The next GPU call, ready to run (~7 minutes of a 10-minute call): what session 6 could not run.
#   run: bash bench/next_gpu_call.sh   kind: nvidia-h200   carry: [".whl"]
# 1. Cold start with an empty Triton cache, then a warm one (2 API processes, as the GPU pods run):
#    a new pod starts with an empty cache (TRITON_CACHE_DIR is on its /tmp emptyDir); the first server
#    on a fresh machine took 24-31 s to /ready in session 6, later ones 13-17 s, never separated.
# 2. The prompt-chunk cap (max_prefill_tokens_when_decoding) 256 vs 512 now that two API processes
#    took the API's bursts out of the ITL tail: 256 gave ITL P99 9.5 ms with one API process.
# 3. The whole bench on the final code with the GPU pods' settings (decode, offline, cold start, online).
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
nvidia-smi -L
bash bench/device.sh true > /dev/null
bash bench/device.sh python3 -c "from pathlib import Path; from bench.shapes import write_checkpoint; \
write_checkpoint(Path('/tmp/bench-1.5b'), '1.5b')" > /dev/null
export R1SERVE_ENGINE_PROCESS=true R1SERVE_ASYNC_SCHEDULING=true R1SERVE_API_SERVERS=2
# first on the machine (libraries read from disk, the default cache empty), then with the libraries
# in the page cache and an empty Triton cache, then with that cache warm
part cold_first 90 bash bench/device.sh python3 -m bench --shape 1.5b --cases coldstart --out "$OUT/cold_first"
for cache in empty warm; do
  TRITON_CACHE_DIR=/tmp/triton-fresh part "cold_$cache" 90 bash bench/device.sh \
    python3 -m bench --shape 1.5b --cases coldstart --out "$OUT/cold_$cache"
done
for cap in 256 512; do
  R1SERVE_MAX_PREFILL_TOKENS_WHEN_DECODING=$cap part "cap$cap" 90 bash bench/device.sh \
    python3 -m bench --shape 1.5b --cases online --levels 64,128 --requests-per-stream 8 --out "$OUT/cap$cap"
done
part full 200 bash bench/device.sh python3 -m bench --shape 1.5b --cases decode,offline,coldstart,online --async-scheduling \
  --levels 1,8,32,64,128,256 --out "$OUT/full"
grep -h "cold start" "$OUT"/cold_*.log
for f in cap256 cap512 full; do grep -v httpx "$OUT/$f.log" | grep -A10 "online: streaming" | grep "│"; done
# only a few files come back from a call: keep the JSONs
rm -f "$OUT"/*/server.log "$OUT"/*/*.png "$OUT"/cold_*.log "$OUT"/cap*.log
ls -R "$OUT"
