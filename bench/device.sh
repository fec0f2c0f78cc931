#!/usr/bin/env bash
# On the GPU machine: install the carried wheels (.whl, see bench/README.md), then run "$@".
set -euo pipefail
# once per set of wheels: parts of one call may start side by side
marker=/tmp/site/.installed-$(ls .whl | md5sum | cut -c1-12)
if [ ! -e "$marker" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  touch "$marker"
fi
export PYTHONPATH=/tmp/site:$PWD/server:$PWD/scripts:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'
"$@"
