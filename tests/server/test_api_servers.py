"""Several API processes in front of one engine process (`api_servers=2`, r1serve.supervisor): the
same tokens as one process, through the official `openai` client, with both processes taking
connections; metrics that sum every process whichever answers the scrape; a SIGTERM that drains
them all and exits 0 with no process left, or during start-up stops them at once; an engine that
dies ending everything with one message; a supervisor killed outright taking them all with it.

Real servers on the tiny model over HTTP; the API processes and the engine are the supervisor's
spawn children (the one with a listening socket on the port is an API process).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from r1ops.processes import ServerProcess

pytestmark = pytest.mark.slow
# The CPU engine on a GPU machine too: what is tested is the processes, and two servers on one GPU
# would size their KV caches against each other (the GPU engine process: test_engine_process.py).
CPU = {"device": "cpu", "dtype": "float32"}
TWO = {"engine_process": True, "api_servers": 2, **CPU}


def children(server: ServerProcess) -> tuple[list[psutil.Process], psutil.Process]:
    """The API processes and the engine process."""
    spawned = [
        c for c in psutil.Process(server.proc.pid).children() if any("spawn_main" in p for p in c.cmdline())
    ]
    api = [c for c in spawned if any(cn.laddr.port == server.port for cn in c.net_connections("tcp"))]
    (engine,) = [c for c in spawned if c not in api]
    return api, engine


def metric(text: str, name: str) -> float:
    return float(re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.M).group(1))


def stream(
    client: openai.OpenAI, model: str, prompt: str, max_tokens: int, started: threading.Event | None = None
) -> tuple[str, int, str]:
    chunks = client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    text, tokens, finish = "", 0, ""
    for chunk in chunks:
        if started is not None:
            started.set()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            text += choice.text
            finish = choice.finish_reason or finish
    return text, tokens, finish


def test_two_api_processes_give_one_process_tokens_and_both_take_connections(start_server) -> None:
    one = start_server(engine_process=True, **CPU)
    two = start_server(**TWO)
    api, engine = children(two)
    assert len(api) == 2
    prompts = [f"Prompt number {i} says" for i in range(16)]
    results = {}
    for server in (one, two):
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as client:
            model = client.models.list().data[0].id
            # one at a time: a batch's shape may change the rounding, so equal tokens need equal batches
            results[server.port] = [stream(client, model, p, 12) for p in prompts[:4]]
    assert results[one.port] == results[two.port]
    assert all(tokens == 12 and finish == "length" for _, tokens, finish in results[two.port])

    # 16 streams at once, each on its connection: each API process holds some of them
    held: list[int] = []

    def long_stream(prompt: str) -> tuple[str, int, str]:
        with openai.OpenAI(base_url=f"{two.base_url}/v1", api_key="unused", max_retries=0) as client:
            return stream(client, two.model_dir.name, prompt, 400)

    with ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(long_stream, p) for p in prompts]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(held) < len(prompts):
            held = [
                sum(
                    cn.status == "ESTABLISHED" and cn.laddr.port == two.port
                    for cn in p.net_connections("tcp")
                )
                for p in api
            ]
            time.sleep(0.05)
        done = [f.result(timeout=300) for f in futures]
    assert sorted(held) != [0, len(prompts)] and sum(held) == len(prompts), held
    assert all(tokens == 400 and finish == "length" for _, tokens, finish in done)
    # Only the engine process loads torch, not the supervisor or the API processes, whatever they
    # served (its imports took ~600 MiB of each one's memory, and seconds of a GPU host's start-up
    # beside the engine's): streams, a prompt rejected without asking the engine, /version, /metrics
    body = {"model": two.model_dir.name, "prompt": "word " * 5000, "max_tokens": 1}
    for _ in api:  # each request on its own connection: spread over the API processes
        assert httpx.post(f"{two.base_url}/v1/completions", json=body, timeout=30).status_code == 400
        assert httpx.get(f"{two.base_url}/version", timeout=30).json()["dtype"] == "float32"
        assert httpx.get(f"{two.base_url}/metrics", timeout=30).status_code == 200
    for process in (psutil.Process(one.proc.pid), psutil.Process(two.proc.pid), *api):
        assert not any("libtorch" in m.path for m in process.memory_maps()), process.cmdline()
    assert any("libtorch" in m.path for m in engine.memory_maps())


def test_cpus_pin_the_supervisor_and_every_process_it_spawns(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`cpus` (the bench's --server-cpus: a pod's CPU limit under the static CPU manager) holds for
    the engine and API processes too, which the supervisor spawns after it has started."""
    cpu = max(os.sched_getaffinity(0))
    server = ServerProcess(tiny_model_dir, settings=TWO, log_path=tmp_path / "server.log", cpus=str(cpu))
    try:
        server.start()
        api, engine = children(server)
        for process in (psutil.Process(server.proc.pid), *api, engine):
            assert process.cpu_affinity() == [cpu], process.cmdline()
        body = {"model": server.model_dir.name, "prompt": "Hi", "max_tokens": 4, "ignore_eos": True}
        assert httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60).status_code == 200
    finally:
        server.stop()


def test_metrics_sum_every_api_process_whichever_answers(start_server) -> None:
    server = start_server(**TWO)
    requests, tokens = 20, 6
    body = {"model": server.model_dir.name, "prompt": "Hi", "max_tokens": tokens, "ignore_eos": True}
    # a new connection each: the kernel spreads them over both processes (all on one: p = 2^-19)
    for _ in range(requests):
        assert httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60).status_code == 200
    # the last step's stats reach the process that counts it on its own schedule: wait for them
    deadline = time.monotonic() + 30
    while (
        metric(httpx.get(f"{server.base_url}/metrics").text, "r1serve_batch_size_count") < requests * tokens
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for _ in range(16):  # scrapes on new connections too: both processes answer some (p = 1 - 2^-15)
        text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
        code_200 = 'inference_requests_total{code="200",model_name="%s",route="/v1/completions"}'
        assert (
            float(re.search(re.escape(code_200 % server.model_dir.name) + r" (\S+)", text).group(1))
            == requests
        )
        assert metric(text, "vllm:generation_tokens_total") == requests * tokens
        # one at a time, one step a token: each step counted once, not once per API process
        assert metric(text, "r1serve_batch_size_count") == requests * tokens
        assert metric(text, "vllm:num_requests_running") == 0
        assert "process_cpu_seconds_total" not in text  # one process's CPU would pass for the server's


def ready_status(server: ServerProcess) -> int:
    """/ready's answer. An API process that has drained closes its socket; a connection the kernel gave
    it just before is reset (a process with no stream drains at once), and the next goes to another."""
    for _ in range(5):
        try:
            return httpx.get(f"{server.base_url}/ready", timeout=10).status_code
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            time.sleep(0.1)
    raise AssertionError("/ready: no answer in 5 tries")


def test_sigterm_drains_every_api_process_then_exits_zero(start_server) -> None:
    server = start_server(**TWO)
    api, engine = children(server)
    model = server.model_dir.name

    started = [threading.Event() for _ in range(8)]

    def one(i: int) -> tuple[str, int, str]:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as client:
            return stream(client, model, f"Drain {i}", 600, started[i])

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(8)]
        assert all(event.wait(60) for event in started)  # every stream is flowing
        server.terminate()
        time.sleep(0.5)
        assert ready_status(server) == 503
        done = [f.result(timeout=300) for f in futures]
    assert all(tokens == 600 and finish == "length" for _, tokens, finish in done)
    assert server.proc.wait(60) == 0
    _, alive = psutil.wait_procs([*api, engine], timeout=30)
    assert alive == []


def test_engine_dying_ends_every_api_process_with_one_message(start_server, tmp_path: Path) -> None:
    server = start_server(**TWO)
    api, engine = children(server)
    engine.send_signal(signal.SIGKILL)
    assert server.proc.wait(60) == 1
    _, alive = psutil.wait_procs(api, timeout=30)
    assert alive == []
    log = server.log_path.read_text()
    fatal = [line for line in log.splitlines() if line.startswith("r1serve serve:")]
    assert len(fatal) == 1 and "engine process died" in fatal[0], log


def test_sigterm_while_the_engine_loads_stops_everything_at_once(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The API processes are still importing and the engine loading: the forwarded signal ends them
    (a stop, not a failure), and the engine, which never became ready to read a stop, is killed
    rather than waited for. Bounded by the wait (shorter than the supervisor's 30 s for a loaded
    engine to stop), not timed."""
    server = ServerProcess(tiny_model_dir, settings=TWO, log_path=tmp_path / "server.log")
    with pytest.raises(TimeoutError):
        server.start(ready_timeout=0.5)
    try:
        time.sleep(0.5)
        procs = psutil.Process(server.proc.pid).children(recursive=True)
        server.terminate()
        assert server.proc.wait(20) == 0
        _, alive = psutil.wait_procs(procs, timeout=10)
        assert alive == []
    finally:
        server.proc.kill()
    log = server.log_path.read_text()
    assert "stopping the others" not in log and "r1serve serve:" not in log, log


def test_supervisor_killed_takes_every_process_with_it(start_server) -> None:
    server = start_server(**TWO)
    api, engine = children(server)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    _, alive = psutil.wait_procs([*api, engine], timeout=30)
    assert alive == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"R1SERVE_API_SERVERS": "2"}, "needs engine_process=true"),
        ({"R1SERVE_API_SERVERS": "2", "R1SERVE_ENGINE_PROCESS": "true"}, "config.json"),
    ],
    ids=["without-engine-process", "bad-checkpoint"],
)
def test_bad_start_exits_with_one_clear_message(tmp_path: Path, env: dict, message: str) -> None:
    (tmp_path / "m").mkdir()
    cmd = [sys.executable, "-m", "r1serve.cli", "serve", str(tmp_path / "m"), "--host", "127.0.0.1"]
    done = subprocess.run(
        cmd, env=os.environ | env | {"R1SERVE_PORT": "0"}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    fatal = [line for line in done.stderr.splitlines() if line.startswith("r1serve serve:")]
    assert len(fatal) == 1 and message in fatal[0], done.stderr
    assert "Traceback" not in done.stderr
