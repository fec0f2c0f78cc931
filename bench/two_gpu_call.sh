#!/usr/bin/env bash
# The two-GPU call (~5 minutes).  run: bash bench/two_gpu_call.sh   kind: nvidia-h200-x2   carry: [".whl"]
# The tensor-parallel tests over NCCL (a hang dumps every stack: bench/part.sh), then the TP=2 bench
# with the pods' settings. Session 12: 3 + 17 passed; TP=2 slower than one card on the 1.5B shape.
set -u
cd "$(dirname "$0")/.."
source bench/part.sh
call_start
R1_DUMP_AFTER=150 part tp_equal 170 bash bench/device.sh $PT -rs tests/server/test_tensor_parallel.py \
  tests/server/test_engine_process.py -k "two_gpus and not killed or tensor_parallel_ranks"
tail -5 "$OUT/tp_equal.log"
R1_DUMP_AFTER=100 part tp_fail 120 bash bench/device.sh $PT tests/server/test_tensor_parallel.py \
  -k "not two_gpus or killed"
tail -5 "$OUT/tp_fail.log"
export R1SERVE_ENGINE_PROCESS=true R1SERVE_ASYNC_SCHEDULING=true R1SERVE_API_SERVERS=2
part tp2 200 bash bench/device.sh python3 -m bench --shape 1.5b --tp 2 --cases coldstart,decode,offline,online \
  --levels 1,64 --out "$OUT/tp2"
grep -v httpx "$OUT/tp2.log" | grep "cold start\|│\|┃" | cut -c1-250
rm -f "$OUT"/tp2/server.log "$OUT"/tp2/*.png
ls -R "$OUT"
