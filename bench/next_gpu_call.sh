#!/usr/bin/env bash
# The next GPU call, ready to run (~6 minutes of a 10-minute call).
#   run: bash bench/next_gpu_call.sh   kind: nvidia-h200   carry: [".whl"]
# Session 13 removed the fused decode rotary (docs/PERFORMANCE.md, session 13) and put the attention
# kernel, the decoder, triton_fused and their tests back to session 11's code; their sm_90
# instructions match those of session 12's final code (flag off). This call confirms it on the card:
# 1. the whole one-GPU suite, the files of session 12's first run (on session 11's code, the code
#    now: 133 passed, 2 skipped);
# 2. `bench.profile_step` (session 13, flag off: batch 1 1.796-1.820 ms a step, graph replay);
# 3. the decode and online cases with the pods' settings (session 12: 64 streams ITL P99 7.27-8.13 ms).
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
part bench 100 bash bench/device.sh python3 -m bench --shape 1.5b --cases decode,online --levels 1,64 \
  --out "$OUT/bench"
grep -v httpx "$OUT/bench.log" | grep "│\|┃" | cut -c1-230
rm -f "$OUT"/bench/server.log "$OUT"/bench/*.png
ls -R "$OUT"
