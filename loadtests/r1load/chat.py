"""One OpenAI chat completion through Locust's HTTP client, timed the way LLM serving is judged.

Besides Locust's own entry for the POST, each request fires custom entries into Locust's
statistics (events.request): TTFT (time to first token), ITL (mean inter-token latency), E2E (whole
request) in milliseconds, and TOKENS/S whose "response time" column holds output tokens per
second. They land in the console table, the CSV and the HTML report like any request.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import requests

TTFT, ITL, E2E, TOKENS_PER_S = "TTFT", "ITL", "E2E", "TOKENS/S"
CUSTOM_TYPES = (TTFT, ITL, E2E, TOKENS_PER_S)
# Seconds to connect, and to wait for the next bytes of a response: a stream that hangs fails.
REQUEST_TIMEOUT = (10.0, 300.0)


@dataclass
class Timing:
    started: float
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0  # content + reasoning chunks seen, replaced by usage when the server sends it


def _fire(environment: Any, kind: str, name: str, value: float) -> None:
    environment.events.request.fire(
        request_type=kind, name=name, response_time=value, response_length=0, exception=None, context={}
    )


def _read_stream(response: Any, timing: Timing) -> str | None:
    """Consume the SSE stream; return an error message, or None when it ended with [DONE]."""
    for raw in response.iter_lines():
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return None
        try:
            chunk = json.loads(data)
        except ValueError:
            return f"bad SSE data: {data[:80]}"
        if "error" in chunk:
            return f"stream error: {chunk['error'].get('message', chunk['error'])}"
        if chunk.get("usage"):
            timing.tokens = chunk["usage"].get("completion_tokens", timing.tokens)
        for choice in chunk.get("choices", []):
            delta = choice.get("delta", {})
            if delta.get("content") or delta.get("reasoning_content"):
                now = time.perf_counter()
                timing.first_token = timing.first_token or now
                timing.last_token = now
                if not chunk.get("usage"):
                    timing.tokens += 1
    return "stream ended without [DONE]"


def _read_response(resp: Any, stream: bool, timing: Timing) -> str | None:
    """Read a response to its end; return an error message, or None when it is a good one."""
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    if stream:
        return _read_stream(resp, timing)
    try:
        timing.tokens = resp.json()["usage"]["completion_tokens"]
    except (ValueError, KeyError, TypeError) as exc:  # TypeError: "usage": null
        return f"bad response body: {exc}"
    return None


def chat(
    user: Any, payload: dict[str, Any], stream: bool, headers: dict[str, str], base: str = "", label: str = ""
) -> None:
    """POST one chat completion to `base` (default: --host); `label` tags its statistics."""
    name = ("stream" if stream else "non-stream") + (f" {label}" if label else "")
    body = dict(payload, stream=stream)
    if stream:
        body["stream_options"] = {"include_usage": True}
    timing = Timing(time.perf_counter())
    with user.client.post(
        f"{base}/v1/chat/completions",
        json=body,
        headers=headers,
        stream=stream,
        catch_response=True,
        name=f"/v1/chat/completions [{name}]",
        timeout=REQUEST_TIMEOUT,
    ) as resp:
        try:
            error = _read_response(resp, stream, timing)
        except requests.RequestException as exc:
            # A stream broken or stalled after its headers: Locust would re-raise this from the
            # `with` and count the request nowhere, so an SLO gate could pass over it.
            error = f"response broken off: {exc}"
        if error:
            resp.failure(error)
            return
        resp.success()
    done = time.perf_counter()
    env = user.environment
    _fire(env, E2E, name, (done - timing.started) * 1000)
    if stream and timing.first_token is not None:
        _fire(env, TTFT, name, (timing.first_token - timing.started) * 1000)
        if timing.tokens > 1 and timing.last_token is not None:
            _fire(env, ITL, name, (timing.last_token - timing.first_token) * 1000 / (timing.tokens - 1))
    if timing.tokens and done > timing.started:
        _fire(env, TOKENS_PER_S, name, timing.tokens / (done - timing.started))
