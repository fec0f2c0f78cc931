#!/usr/bin/env bash
# The next GPU call, ready to run (~8 minutes of a 10-minute call): what session 8 left unmeasured.
#   run: bash bench/next_gpu_call.sh   kind: nvidia-h200   carry: [".whl"]
# 1. The one-GPU tests on session 8's code (the graph-filling prompt cap, tokenising on a
#    worker thread, the step-interval metric): session 8 ran only the engine and precompile tests.
# 2. 1.5B online at 64 and 128 streams with ~2,000-word prompts (~2,600 tokens, R1-like contexts):
#    session 8 measured long prompts at 32 streams only (ITL P99 13.8-16.1 -> 9.5-10.9 ms with the
#    tokeniser off the event loop); the engine's step P99 beside it says how much is delivery.
# 3. 7B online at 64 streams with the final code, ~200-word prompts: TTFT P99 against session 8's
#    661 ms (the prompt cap fills the 640-token graph there too).
# Each part prints its figures as it ends; JSON is written per case.
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
nvidia-smi -L
bash bench/device.sh true > /dev/null
part gputests 240 bash bench/device.sh python3 -m pytest -q -p no:cacheprovider -p gpu_instafail \
  tests/server/test_kernel_precompile.py tests/server/test_engine_gpu.py tests/server/test_gpu_fast_path.py \
  tests/server/test_cuda_graph_staging.py tests/server/test_model_parity.py tests/server/test_engine_process.py \
  tests/server/test_triton_decode_kernels.py tests/server/test_paged_prefill_attention.py tests/server/test_sampler.py
bash bench/device.sh python3 -c "from pathlib import Path; from bench.shapes import write_checkpoint; \
write_checkpoint(Path('/tmp/bench-1.5b'), '1.5b')" > /dev/null
export R1SERVE_ENGINE_PROCESS=true R1SERVE_ASYNC_SCHEDULING=true R1SERVE_API_SERVERS=2
part long 150 bash bench/device.sh python3 -m bench --shape 1.5b --cases online --levels 64,128 \
  --prompt-words 2000 --requests-per-stream 4 --out "$OUT/long"
grep -v httpx "$OUT/long.log" | grep "│"
bash bench/device.sh python3 -c "from pathlib import Path; from bench.shapes import write_checkpoint; \
write_checkpoint(Path('/tmp/bench-7b'), '7b')" > /dev/null
part online_7b 100 bash bench/device.sh python3 -m bench --shape 7b --cases online --levels 64 \
  --out "$OUT/online_7b"
grep -v httpx "$OUT/online_7b.log" | grep "cold start\|│"
# only a few files come back from a call: keep the JSONs and the test log
rm -f "$OUT"/*/server.log "$OUT"/*/*.png "$OUT"/long.log "$OUT"/online_7b.log
ls -R "$OUT"
