#!/usr/bin/env bash
# The next GPU call, ready to run (~7 minutes of a 10-minute call): what session 5 could not run.
#   run: bash bench/next_gpu_call.sh   kind: nvidia-h200-x2 (or nvidia-h200: the two-GPU tests then
#   skip themselves)   carry: [".whl"]
# 1. Tensor parallel on two GPUs with session 5's attention launch shapes (last passed in session 4).
# 2. The thread mode (engine_process=false, the server's default outside the GPU pods) beside the
#    engine process, both with async scheduling, 8 requests a stream (steadier P99s).
# 3. The API process's CPU per streamed token on that machine's server-class cores (no GPU needed;
#    measured so far on the 2-core development VM only), at 64 and 128 streams.
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
nvidia-smi -L
bash bench/device.sh true > /dev/null
bash bench/device.sh python3 -c "from pathlib import Path; from bench.shapes import write_checkpoint; \
write_checkpoint(Path('/tmp/bench-1.5b'), '1.5b')" > /dev/null
PT="python3 -m pytest -v -s -p no:cacheprovider -p gpu_instafail"
R1_DUMP_AFTER=150 part tp 170 bash bench/device.sh $PT tests/server/test_tensor_parallel.py -k "two_gpus"
export R1SERVE_ASYNC_SCHEDULING=true
for mode in true false; do
  R1SERVE_ENGINE_PROCESS=$mode CUDA_VISIBLE_DEVICES=0 part "process_$mode" 150 bash bench/device.sh \
    python3 -m bench --shape 1.5b --cases online --levels 32,64,128 --requests-per-stream 8 --out "$OUT/process_$mode"
done
for streams in 64 128; do
  part "api_$streams" 90 bash bench/device.sh python3 -m bench.api_overhead --streams "$streams" --requests 1024
done
# only a few files come back from a call: keep the JSONs and logs
rm -f "$OUT"/*/server.log "$OUT"/*/*.png
ls -R "$OUT"
