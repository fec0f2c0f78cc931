#!/usr/bin/env bash
# The next GPU call, ready to run (~6 minutes of a 10-minute call).
#   run: bash bench/next_gpu_call.sh   kind: nvidia-h200   carry: [".whl"]
# The standing check of the serving code on one H200 (session 14 ran it on the code now; docs/PERFORMANCE.md):
# 1. the whole one-GPU suite (session 14: 133 passed, 2 skipped, in 324 s);
# 2. `bench.profile_step` (session 14: batch 1 1.776-1.795 ms a step, graph replay);
# 3. the decode and online cases with the pods' settings, async scheduling in both (session 14:
#    batch 1 563 tok/s; 64 streams ITL P99 7.28-8.44 ms over five servers, TTFT P99 157-186 ms).
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
call_start
part gputests 360 bash bench/device.sh $PT --durations=5 tests/server/test_kernel_precompile.py \
  tests/server/test_engine_gpu.py tests/server/test_gpu_fast_path.py tests/server/test_cuda_graph_staging.py \
  tests/server/test_model_parity.py tests/server/test_engine_process.py tests/server/test_api_servers.py \
  tests/server/test_model_runner.py \
  tests/server/test_triton_decode_kernels.py tests/server/test_paged_prefill_attention.py \
  tests/server/test_sampler.py
grep -v "^\.*  *\[" "$OUT/gputests.log" | tail -12
part profile 60 bash bench/device.sh python3 -m bench.profile_step
grep "GPU total\|wall, CUDA" "$OUT/profile.log"
export R1SERVE_ENGINE_PROCESS=true R1SERVE_ASYNC_SCHEDULING=true R1SERVE_API_SERVERS=2
part bench 100 bash bench/device.sh python3 -m bench --shape 1.5b --cases decode,online --levels 1,64 --async-scheduling \
  --out "$OUT/bench"
grep -v httpx "$OUT/bench.log" | grep "│\|┃" | cut -c1-230
rm -f "$OUT"/bench/server.log "$OUT"/bench/*.png
ls -R "$OUT"
