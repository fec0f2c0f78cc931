"""Start-up compiles its Triton kernels on a pool of threads, before their first launch. On the GPU
(skipped without one; CI has none): a fresh process with an empty kernel cache, so that every kernel
compiles: each compilation the runner's start-up and its first requests ask for must have run on
the pool, none on the thread that then launches them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = """
import json, sys, threading
from pathlib import Path
import triton.compiler
from triton.compiler import compiler

threads = []
compile_ = compiler.compile

def recording(*args, **kwargs):
    threads.append(threading.current_thread().name)
    return compile_(*args, **kwargs)

# before any kernel's first launch binds the compiler
triton.compiler.compile = compiler.compile = recording

from r1serve.engine.llm_engine import LLMEngine
from r1serve.engine.sequence import SamplingParams, Sequence
from r1serve.model import kernel_compile
from r1serve.model_runner import ModelRunner

runner = ModelRunner(
    Path(sys.argv[1]), device="cuda", progress=False, max_model_len=256, max_num_seqs=16,
    kv_cache_memory=2**28,
)
runner.warmup()
at_start = len(threads)
engine = LLMEngine(runner, max_num_seqs=16, max_num_batched_tokens=2048, async_scheduling=True)
params = SamplingParams(max_tokens=8, ignore_eos=True)
seqs = [Sequence([7 + i] * n, params) for i, n in enumerate((3, 40, 200))]
for s in seqs:
    engine.add(s)
while engine.has_work():
    engine.step()
print(json.dumps({"available": kernel_compile.available(), "threads": threads, "at_start": at_start}))
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_start_up_compiles_every_kernel_on_the_pool(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "triton")}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["available"]  # the GPU machine's Triton has AsyncCompileMode
    threads = report["threads"]
    assert report["at_start"] == len(threads) > 0  # serving compiled nothing more
    assert all(name.startswith("triton-compile") for name in threads), threads


@pytest.mark.parametrize("use_graphs", [True, False])
def test_precompile_steps_run_on_any_device(tiny_model_dir: Path, use_graphs: bool) -> None:
    """The pass's steps themselves (on the CPU nothing compiles): they fit the runner's cache and
    leave it serving as before."""
    from r1serve.model_runner import ModelRunner
    from r1serve.packed_step import ScheduledSeq

    runner = ModelRunner(tiny_model_dir, device="cpu", progress=False, max_model_len=64, max_num_seqs=8)
    step = [ScheduledSeq(list(range(5, 17)), 0, [0])]
    before = runner.run(step)
    cache, blocks = runner.kv_cache, runner.num_blocks
    del runner.num_blocks  # as in _build, where the pass runs before the cache is sized
    runner._precompile(max_num_seqs=8, use_graphs=use_graphs, profile=True)
    runner.model.bind_kv_cache(cache)  # as _build goes on to bind the real cache
    runner.num_blocks = blocks
    assert torch.equal(runner.run(step), before)


def test_precompile_steps_fit_the_shortest_model_length(tiny_model_dir: Path) -> None:
    from r1serve.model_runner import ModelRunner

    runner = ModelRunner(tiny_model_dir, device="cpu", progress=False, max_model_len=1, max_num_seqs=4)
    runner._precompile(max_num_seqs=4, use_graphs=True, profile=True)  # no empty prompt to pack
