#!/usr/bin/env bash
# The next GPU call, ready to run (~9 minutes of a 10-minute call).
#   run: bash bench/next_gpu_call.sh   kind: nvidia-h200   carry: [".whl"]
# It validates rotary + the K/V store inside the decode attention kernel (decoder.FUSED_DECODE_ROPE,
# off since session 12: docs/PERFORMANCE.md, session 12, section 6) and measures it:
# 1. the kernel against the two launches it replaces (how many ulp the K caches are apart) and the
#    model's greedy tokens with the flag on and off;
# 2. the flag switched on in this machine's copy of the tree (only there), then the whole one-GPU
#    suite with it on (session 12 with it off: 133 passed, 2 skipped);
# 3. `bench.profile_step` with the flag on, then off, on the same lease (session 12, across two
#    leases: batch 1 1.752 against 1.820 ms a step);
# 4. the decode and online cases with it on, with the pods' settings.
# If all pass, set FUSED_DECODE_ROPE = True in server/r1serve/model/decoder.py and record the run.
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
call_start
part fused 150 bash bench/device.sh $PT -v tests/server/test_paged_prefill_attention.py \
  tests/server/test_gpu_fast_path.py -k "new_kv or fused_decode_rope"
grep -E "PASSED|FAILED|ulp|splits:" "$OUT/fused.log" | cut -c1-200 | head -30
sed -i 's/^FUSED_DECODE_ROPE = False$/FUSED_DECODE_ROPE = True/' server/r1serve/model/decoder.py
grep -n "^FUSED_DECODE_ROPE" server/r1serve/model/decoder.py
part gputests 330 bash bench/device.sh $PT --durations=5 tests/server/test_kernel_precompile.py \
  tests/server/test_engine_gpu.py tests/server/test_gpu_fast_path.py tests/server/test_cuda_graph_staging.py \
  tests/server/test_model_parity.py tests/server/test_engine_process.py tests/server/test_model_runner.py \
  tests/server/test_triton_decode_kernels.py tests/server/test_paged_prefill_attention.py \
  tests/server/test_sampler.py
grep -v "^\.*  *\[" "$OUT/gputests.log" | tail -12
for flag in True False; do
  sed -i "s/^FUSED_DECODE_ROPE = .*/FUSED_DECODE_ROPE = $flag/" server/r1serve/model/decoder.py
  part "profile_$flag" 60 bash bench/device.sh python3 -m bench.profile_step
  grep "GPU total\|wall, CUDA" "$OUT/profile_$flag.log"
done
sed -i 's/^FUSED_DECODE_ROPE = .*/FUSED_DECODE_ROPE = True/' server/r1serve/model/decoder.py
export R1SERVE_ENGINE_PROCESS=true R1SERVE_ASYNC_SCHEDULING=true R1SERVE_API_SERVERS=2
part bench 100 bash bench/device.sh python3 -m bench --shape 1.5b --cases decode,online --levels 1,64 \
  --out "$OUT/bench"
grep -v httpx "$OUT/bench.log" | grep "│\|┃" | cut -c1-230
rm -f "$OUT"/bench/server.log "$OUT"/bench/*.png
ls -R "$OUT"
