#!/usr/bin/env bash
# The next GPU call, ready to run (~8.5 minutes of a 10-minute call).
#   run: bash bench/next_gpu_call.sh   kind: nvidia-h200   carry: [".whl"]
# 1. The one-GPU suite in one pytest, on session 11's final code. Session 11 ran it whole before its
#    last change (110 passed; two failures were a test that relied on the layers' random init, since
#    fixed and passed), then only the engine-process, API-process and model-runner tests after it
#    (31 passed): the API processes no longer import torch.
# 2. Three cold starts of the 1.5B shape with the pods' settings, the first on a fresh machine, each
#    with the 1- and 64-stream levels and its start-up phases (cold_start_log). Session 11: 10.1-14.5 s
#    over six servers (18.6-21.2 s before its changes).
# 3. `python -m bench.startup_profile` once: the engine's start-up by step and code site.
# Each part prints its figures as it ends; JSON is written per run.
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
nvidia-smi -L
bash bench/device.sh true > /dev/null
bash bench/device.sh python3 -c "from pathlib import Path; from bench.shapes import write_checkpoint; \
write_checkpoint(Path('/tmp/bench-1.5b'), '1.5b')" > /dev/null
export R1SERVE_ENGINE_PROCESS=true R1SERVE_ASYNC_SCHEDULING=true R1SERVE_API_SERVERS=2
for i in 1 2 3; do
  part "start$i" 80 bash bench/device.sh python3 -m bench --shape 1.5b --cases coldstart,online \
    --levels 1,64 --out "$OUT/start$i"
  grep -v httpx "$OUT/start$i.log" | grep "cold start\|│"
  python3 -c "import json, sys; print(*json.load(open(sys.argv[1]))['cold_start_log'], sep='\n')" \
    "$OUT/start$i/bench-1.5b.json"  # each start-up phase's time
  rm -f "$OUT/start$i/server.log" "$OUT/start$i"/*.png "$OUT/start$i.log"
  [ "$i" = 1 ] && part gputests 420 bash bench/device.sh python3 -m pytest -q -p no:cacheprovider \
    -p gpu_instafail --durations=8 tests/server/test_kernel_precompile.py tests/server/test_engine_gpu.py \
    tests/server/test_gpu_fast_path.py tests/server/test_cuda_graph_staging.py \
    tests/server/test_model_parity.py tests/server/test_engine_process.py \
    tests/server/test_api_servers.py tests/server/test_model_runner.py \
    tests/server/test_triton_decode_kernels.py tests/server/test_paged_prefill_attention.py \
    tests/server/test_sampler.py && grep -v "^\.*  *\[" "$OUT/gputests.log" | tail -15
done
part profile 60 bash bench/device.sh python3 -m bench.startup_profile /tmp/bench-1.5b --top 15 \
  --out "$OUT/profile"  # the engine's start-up by step: imports, weights, kernels, graphs
grep -v "^torch\|^NVIDIA" "$OUT/profile.log"; rm -f "$OUT/profile.log"
ls -R "$OUT"
