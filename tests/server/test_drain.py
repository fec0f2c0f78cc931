"""SIGTERM while streams are in flight: /ready turns 503 first, new work is refused with 503,
every in-flight stream runs to its end, and the process exits 0. A second Ctrl-C skips the drain
and exits at once, leaving no engine process behind."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time

import httpx
import psutil
import pytest

pytestmark = [
    pytest.mark.slow,
    # the engine in its own process (engine_process=true) must drain as the engine thread does, then stop
    # cleanly
    pytest.mark.parametrize("engine_process", [True, False], ids=["engine-process", "engine-thread"]),
]

TOKENS = 200


def stream_completion(base_url: str, model: str, started: threading.Event, result: dict) -> None:
    body = {"model": model, "prompt": "Count slowly", "max_tokens": TOKENS, "ignore_eos": True}
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    try:
        with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=300) as r:
            result["status"] = r.status_code
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                started.set()
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    result["done"] = True
                    continue
                chunk = json.loads(data)
                if chunk.get("usage"):
                    result["tokens"] = chunk["usage"]["completion_tokens"]
                elif chunk["choices"][0]["finish_reason"]:
                    result["finish"] = chunk["choices"][0]["finish_reason"]
    except Exception as exc:  # reported by the assertions below
        result["error"] = repr(exc)
    finally:
        started.set()


def test_sigterm_drains_in_flight_streams_then_exits_zero(start_server, engine_process: bool) -> None:
    server = start_server(drain_timeout=120, engine_process=engine_process)
    model = server.model_dir.name
    started = [threading.Event() for _ in range(4)]
    results: list[dict] = [{} for _ in range(4)]
    threads = [
        threading.Thread(target=stream_completion, args=(server.base_url, model, started[i], results[i]))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for event in started:
        assert event.wait(120)

    server.terminate()
    deadline = time.monotonic() + 30
    while (ready := httpx.get(f"{server.base_url}/ready", timeout=5)).status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    in_flight_when_unready = sum(t.is_alive() for t in threads)
    assert ready.json() == {"status": "draining"} and ready.headers["retry-after"]
    refused = httpx.post(
        f"{server.base_url}/v1/completions", json={"model": model, "prompt": "x"}, timeout=10
    )
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
    assert int(refused.headers["retry-after"]) > 0

    for t in threads:
        t.join(300)
    assert results == [{"status": 200, "finish": "length", "tokens": TOKENS, "done": True}] * 4
    assert server.proc.wait(120) == 0
    # Sanity of the scenario itself: the streams were still running when the server went unready.
    assert in_flight_when_unready > 0


def test_drain_timeout_cuts_what_is_left_and_still_exits_zero(start_server, engine_process: bool) -> None:
    server = start_server(drain_timeout=1, engine_process=engine_process)
    body = {"model": server.model_dir.name, "prompt": "Go", "max_tokens": 3000, "ignore_eos": True}
    body["stream"] = True
    lines = []
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=120) as r:
        stream = r.iter_lines()
        lines.append(next(stream))
        server.terminate()
        with contextlib.suppress(httpx.HTTPError):  # the connection is closed under the stream
            lines.extend(stream)
    assert server.proc.wait(60) == 0
    assert "data: [DONE]" not in lines  # cut off, not completed


def test_second_sigint_forces_the_exit_with_a_stream_in_flight(start_server, engine_process: bool) -> None:
    """Ctrl-C, Ctrl-C: the second skips the drain (and the lifespan shutdown that stops the engine),
    so the process must still exit, and take its engine process with it. Bounded by the waits below:
    a hang fails them rather than a stopwatch."""
    server = start_server(drain_timeout=120, engine_process=engine_process)
    children = psutil.Process(server.proc.pid).children(recursive=True)
    body = {"model": server.model_dir.name, "prompt": "Go", "max_tokens": 3000, "ignore_eos": True}
    body["stream"] = True
    lines: list[str] = []
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=120) as r:
        stream = r.iter_lines()
        lines.append(next(stream))
        server.proc.send_signal(signal.SIGINT)
        while httpx.get(f"{server.base_url}/ready", timeout=5).status_code != 503:  # draining
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(httpx.HTTPError):  # the connection is closed under the stream
            lines.extend(stream)
    assert server.proc.wait(60) == 0
    assert "data: [DONE]" not in lines  # cut off, not completed
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []
