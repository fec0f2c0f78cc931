"""The engine in its own process (`engine_process=true`; off by default until measured on a GPU):
the same tokens as the engine thread, a start-up failure reported as the in-process load reports
it, an abort that frees the child's KV cache, and a child that dies taking the in-flight requests
(and the server) down loudly; an API process killed outright takes its engine process with it.

Real servers on the tiny model over HTTP; the engine child is found as the server's child process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from r1ops.processes import ServerProcess

pytestmark = pytest.mark.slow
CUDA = torch.cuda.is_available()
# On a GPU a fixed KV cache: sized from free memory it would be ~125 GiB of 16-token blocks of the tiny
# model (32.8M blocks, ~45 s to set up on an H200), and it would depend on what else holds the GPU.
FIXED_CACHE = {"kv_cache_memory": 2**28} if CUDA else {}


def engine_child(server: ServerProcess) -> psutil.Process:
    """The engine process (a multiprocessing spawn child; the other child is its resource tracker)."""
    children = psutil.Process(server.proc.pid).children()
    (child,) = [c for c in children if any("spawn_main" in part for part in c.cmdline())]
    return child


def metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return float(re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.M).group(1))


def stream_lines(server: ServerProcess, max_tokens: int) -> Iterator[str]:
    body = {"model": server.model_dir.name, "prompt": "Go", "max_tokens": max_tokens, "ignore_eos": True}
    with httpx.stream(
        "POST", f"{server.base_url}/v1/completions", json=body | {"stream": True}, timeout=120
    ) as r:
        assert r.status_code == 200
        yield from (line for line in r.iter_lines() if line.startswith("data: "))


def completion(server: ServerProcess, prompt: str, **kw: object) -> str:
    body = {"model": server.model_dir.name, "prompt": prompt, "max_tokens": 24, "ignore_eos": True} | kw
    r = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a GPU"))],
)
def test_process_and_thread_give_the_same_tokens(start_server, device: str) -> None:
    """Greedy and seeded requests: token for token equal. One at a time: concurrent requests would share
    steps as each server's timing happens to batch them, and a batch's shape may change the rounding
    (bf16 on the GPU, and float32 too on a near-tie), so equal tokens would rest on luck."""
    # a fixed cache on the GPU: sized from free memory, the second server would also find the first's
    servers = [start_server(device=device, engine_process=mode, **FIXED_CACHE) for mode in (True, False)]
    requests = [(f"Prompt number {i} says", {"temperature": 0}) for i in range(4)]
    requests += [("Seeded", {"temperature": 1.0, "seed": 11})]
    texts = []
    for server in servers:
        texts.append([completion(server, prompt, **kw) for prompt, kw in requests])
    assert texts[0] == texts[1]
    assert all(texts[0])


def test_aborted_stream_frees_the_kv_cache_in_the_child(start_server) -> None:
    server = start_server(engine_process=True, **FIXED_CACHE)
    lines = stream_lines(server, 3000)
    for _ in range(5):
        next(lines)
    assert metric(server, "vllm:kv_cache_usage_perc") > 0
    assert metric(server, "vllm:num_requests_running") == 1
    lines.close()  # the client disconnects: the request is aborted in the engine process
    deadline = time.monotonic() + 30
    while metric(server, "vllm:kv_cache_usage_perc") != 0:
        assert time.monotonic() < deadline, "the aborted request's KV blocks were not freed"
        time.sleep(0.1)
    assert metric(server, "vllm:num_requests_running") == 0


def test_engine_process_dying_fails_in_flight_requests_and_the_server_exits(start_server) -> None:
    server = start_server(engine_process=True, **FIXED_CACHE)
    lines = stream_lines(server, 3000)
    received = [next(lines) for _ in range(3)]
    engine_child(server).send_signal(signal.SIGKILL)
    received += list(lines)
    errors = [json.loads(line[6:])["error"] for line in received if '"error"' in line]
    assert len(errors) == 1 and errors[0]["code"] == "engine_error"
    assert "engine process died" in errors[0]["message"] and "signal 9" in errors[0]["message"]
    assert received[-1] == "data: [DONE]"
    assert server.proc.wait(60) == 1  # not ready any more: exits non-zero, the pod restarts


@pytest.mark.parametrize("engine_process", [True, False], ids=["engine-process", "engine-thread"])
def test_bad_checkpoint_exits_with_one_clear_message(tmp_path: Path, engine_process: bool) -> None:
    (tmp_path / "m").mkdir()
    env = os.environ | {"R1SERVE_ENGINE_PROCESS": str(engine_process), "R1SERVE_PORT": "0"}
    cmd = [sys.executable, "-m", "r1serve.cli", "serve", str(tmp_path / "m"), "--host", "127.0.0.1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    fatal = [line for line in done.stderr.splitlines() if line.startswith("r1serve serve:")]
    assert len(fatal) == 1 and "config.json" in fatal[0], done.stderr
    assert "Traceback" not in done.stderr


def test_tensor_parallel_ranks_start_from_the_engine_process(start_server) -> None:
    """Rank 0 lives in the engine process and spawns rank 1 from there; the answer is one rank's, and
    a SIGTERM stops all of them cleanly."""
    cpu = {"device": "cpu", "dtype": "float32"}
    one = start_server(**cpu)
    two = start_server(**cpu, tensor_parallel_size=2, engine_process=True)
    rank1 = engine_child(two).children()
    assert any("spawn_main" in part for c in rank1 for part in c.cmdline())
    assert completion(two, "Split", temperature=0) == completion(one, "Split", temperature=0)
    procs = [engine_child(two), *engine_child(two).children()]
    assert two.stop() == 0
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert alive == []


def test_engine_process_exits_when_the_api_process_is_killed(start_server) -> None:
    """A SIGKILL runs none of the API process's clean-up: the engine child's lifeline must end it, so no
    engine outlives the server holding a GPU. Bounded by the wait, not timed."""
    server = start_server(engine_process=True, **FIXED_CACHE)
    child = engine_child(server)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    _, alive = psutil.wait_procs([child], timeout=30)
    assert alive == []


def test_the_engine_process_starts_before_the_server_imports_torch() -> None:
    """`r1serve serve` starts the engine child first, so that the child's imports and model load overlap
    the API process's own imports (the web stack); that holds only while starting it needs neither
    torch nor the engine modules."""
    code = (
        "import sys; import r1serve.cli, r1serve.engine.engine_child; "
        "print(sorted(m for m in ('torch', 'fastapi', 'r1serve.engine.engine_process') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_server_that_fails_to_start_shows_why(tmp_path: Path) -> None:
    """The harness's error carries the end of the server's log: a start-up failure seen only on another
    machine (the GPU's) must say why without a second run to fetch the log."""
    (tmp_path / "m").mkdir()
    server = ServerProcess(tmp_path / "m", log_path=tmp_path / "server.log")
    with pytest.raises(RuntimeError, match=r"(?s)exited with 1 before it was ready.*config\.json"):
        server.start()
