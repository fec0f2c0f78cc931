#!/usr/bin/env bash
# The next GPU call, ready to run (2x H200, ~7 minutes of a 10-minute call): what session 4 built
# after its GPU time was spent. Carry the wheels (bench/README.md):
#   run: bash bench/next_gpu_call.sh   kind: nvidia-h200-x2   carry: [".whl"]
# GPU 1: the single-GPU suite (async scheduling on CUDA and everything changed after session 4's
# last call), then one step's GPU time at R1-length contexts. GPU 0: the 1.5B bench with the engine
# process as in the GPU pods, without and then with asynchronous scheduling.
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
nvidia-smi -L
bash bench/device.sh true > /dev/null
# the checkpoint first: parts side by side would both write it
bash bench/device.sh python3 -c "from pathlib import Path; from bench.shapes import write_checkpoint; \
write_checkpoint(Path('/tmp/bench-1.5b'), '1.5b')" > /dev/null
PT="python3 -m pytest -v -s -p no:cacheprovider -p gpu_instafail"
(
  CUDA_VISIBLE_DEVICES=1 part gpu 220 bash bench/device.sh $PT --timeout=90 tests/server/test_engine_gpu.py \
    tests/server/test_gpu_fast_path.py tests/server/test_paged_prefill_attention.py \
    tests/server/test_model_parity.py tests/server/test_triton_decode_kernels.py tests/server/test_sampler.py \
    tests/server/test_engine_process.py -k "not test_engine_process or cuda"
  CUDA_VISIBLE_DEVICES=1 part prof4k 90 bash bench/device.sh python3 -m bench.profile_step --context 4000
) > "$OUT/gpu1.summary" 2>&1 &
export R1SERVE_ENGINE_PROCESS=true
CUDA_VISIBLE_DEVICES=0 part sync 180 bash bench/device.sh python3 -m bench --shape 1.5b \
  --cases decode,offline,online --levels 8,32,64,128,256 --out "$OUT/sync"
R1SERVE_ASYNC_SCHEDULING=true CUDA_VISIBLE_DEVICES=0 part async 180 bash bench/device.sh python3 -m bench \
  --shape 1.5b --cases decode,offline,online --levels 8,32,64,128,256 --async-scheduling --out "$OUT/async"
wait
cat "$OUT/gpu1.summary"
grep -A16 "GPU ms per step" "$OUT/prof4k.log"
# only a few files come back from a call: keep the JSONs and logs
rm -f "$OUT"/*/server.log "$OUT"/*/*.png "$OUT/gpu1.summary"
ls -R "$OUT"
