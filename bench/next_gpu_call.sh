#!/usr/bin/env bash
# The next GPU call, ready to run (~8 minutes of a 10-minute call).
#   run: bash bench/next_gpu_call.sh   kind: nvidia-h200   carry: [".whl"]
# 1. The one-GPU suite in one pytest (session 9 needed two calls: its 240 s limit cut it at 64%).
# 2. The whole online sweep (1..256 streams) of the 1.5B shape with the pods' settings, now with the
#    delivery columns (r1serve_token_delivery_seconds) beside the engine's step pace at every level:
#    session 9 measured them at 64-256 streams only.
# Each part prints its figures as it ends; JSON is written per case.
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
nvidia-smi -L
bash bench/device.sh true > /dev/null
part gputests 330 bash bench/device.sh python3 -m pytest -q -p no:cacheprovider -p gpu_instafail --durations=8 \
  tests/server/test_kernel_precompile.py tests/server/test_engine_gpu.py tests/server/test_gpu_fast_path.py \
  tests/server/test_cuda_graph_staging.py tests/server/test_model_parity.py tests/server/test_engine_process.py \
  tests/server/test_triton_decode_kernels.py tests/server/test_paged_prefill_attention.py tests/server/test_sampler.py
grep -v "^\.*  *\[" "$OUT/gputests.log" | tail -15
bash bench/device.sh python3 -c "from pathlib import Path; from bench.shapes import write_checkpoint; \
write_checkpoint(Path('/tmp/bench-1.5b'), '1.5b')" > /dev/null
export R1SERVE_ENGINE_PROCESS=true R1SERVE_ASYNC_SCHEDULING=true R1SERVE_API_SERVERS=2
part sweep 200 bash bench/device.sh python3 -m bench --shape 1.5b --cases coldstart,online --out "$OUT/sweep"
grep -v httpx "$OUT/sweep.log" | grep "cold start\|│"
# only a few files come back from a call: keep the JSON and the test log
rm -f "$OUT"/*/server.log "$OUT"/*/*.png "$OUT"/sweep.log
ls -R "$OUT"
