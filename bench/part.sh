# Sourced by a GPU-machine call script: `part NAME LIMIT CMD...` runs CMD with its output in
# $OUT/NAME.log. A hung CUDA or NCCL wait ignores signals, so at LIMIT-8 s every Python process of
# CMD's tree dumps its stacks (SIGUSR1, registered by bench/diag/sitecustomize.py, which is on
# PYTHONPATH for the part) and the tree is killed; one hung test cannot take the whole call.
# R1_DUMP_AFTER=SECONDS also makes each Python process dump its stacks once, that long after it
# started (spawned tensor-parallel workers included). `-p gpu_instafail` prints a failing test's
# report as it happens, not at the end a killed run never reaches.
tree() {
  local p=$1
  echo "$p"
  for c in $(ps -o pid= --ppid "$p"); do tree "$c"; done
}
part() {
  local name=$1 t=$2
  shift 2
  echo "=== $name (limit $t s) $(date +%T)"
  PYTHONPATH=$PWD/bench/diag setsid "$@" >"$OUT/$name.log" 2>&1 &
  local pid=$! waited=0
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt $((t - 8)) ]; do
    sleep 1
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "=== $name: still running at $waited s, dumping stacks"
    local pids
    pids=$(tree "$pid")
    for p in $pids; do kill -USR1 "$p" 2>/dev/null; done
    sleep 4
    for p in $pids; do kill -9 "$p" 2>/dev/null; done
  fi
  wait "$pid"
  echo "=== $name rc=$? $(date +%T)"
  grep -E "PASSED|FAILED|ERROR|passed|failed|error" "$OUT/$name.log" | tail -20
}

# The start of a call script (after `cd` to the repository root and sourcing this file): the GPUs
# named, the wheels installed once; $PT is pytest as the call scripts run it.
PT="python3 -m pytest -q -p no:cacheprovider -p gpu_instafail"
call_start() {
  nvidia-smi -L
  bash bench/device.sh true > /dev/null
}
