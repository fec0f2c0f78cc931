"""The live server on 127.0.0.1 through the official `openai` client: the happy paths, reasoning
plumbing, and every client mistake mapped to the right OpenAI error."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import openai
import pytest
from r1ops.processes import ServerProcess
from r1serve.reasoning import ReasoningParser
from r1serve.tokenizer import Tokenizer

N = 12  # output tokens per request (ignore_eos makes the count exact)
EXACT = {"ignore_eos": True}


@pytest.fixture(
    scope="module",
    params=[
        {"engine_process": True},
        {"engine_process": False},
        {"engine_process": True, "async_scheduling": True},
    ],
    ids=["engine-process", "engine-thread", "engine-process-async-scheduling"],
)
def live_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The API must behave the same whichever way the engine runs (the `engine_process` setting) and
    whenever it reads a step's tokens back (`async_scheduling`)."""
    from r1serve.tiny_model import write_tiny_model

    model_dir = tmp_path_factory.mktemp("live-model")
    write_tiny_model(model_dir)
    log = tmp_path_factory.mktemp("live-log") / "server.log"
    with ServerProcess(model_dir, settings=request.param, log_path=log) as server:
        yield server


@pytest.fixture(scope="module")
def client(live_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{live_server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]
TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}


def test_models_lists_the_served_model(client: openai.OpenAI, live_server: ServerProcess) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [live_server.model_dir.name]


def test_chat_completion(client: openai.OpenAI, model: str) -> None:
    resp = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=N, extra_body=EXACT)
    choice = resp.choices[0]
    assert resp.object == "chat.completion" and choice.finish_reason == "length"
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert resp.usage.completion_tokens == N and resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + N


def test_chat_streaming_with_usage(client: openai.OpenAI, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_tokens=N,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=EXACT,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == N
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_streaming_and_not(client: openai.OpenAI, model: str) -> None:
    kw = {"model": model, "prompt": "Once upon a time", "max_tokens": N, "temperature": 0}
    kw["extra_body"] = EXACT
    whole = client.completions.create(**kw)
    assert whole.object == "text_completion" and whole.usage.completion_tokens == N
    streamed = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text
    assert streamed[-1].usage.completion_tokens == N
    echoed = client.completions.create(**kw, echo=True).choices[0].text
    assert echoed == "Once upon a time" + whole.choices[0].text


def test_greedy_and_seeded_requests_are_reproducible(client: openai.OpenAI, model: str) -> None:
    def text(**kw: object) -> str:
        resp = client.completions.create(model=model, prompt="The sea", max_tokens=N, extra_body=EXACT, **kw)
        return resp.choices[0].text

    assert text(temperature=0) == text(temperature=0)
    assert text(temperature=1.0, seed=7) == text(temperature=1.0, seed=7)


def test_presence_and_frequency_penalties_are_served(client: openai.OpenAI, model: str) -> None:
    """Penalties rewrite the step's logits in place; that once failed every step carrying such a
    request (a 500 for it and for whatever shared its step)."""
    out = client.completions.create(
        model=model,
        prompt="Hello",
        max_tokens=8,
        temperature=0,
        presence_penalty=1.5,
        frequency_penalty=1.0,
        extra_body=EXACT,
    )
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 8


def test_reasoning_content_is_split_from_content_end_to_end(
    client: openai.OpenAI, model: str, live_server: ServerProcess
) -> None:
    """The R1 template ends the prompt with <think>: what the model writes goes to reasoning_content
    until </think>. The same prompt through /v1/completions gives the raw text the split must match."""
    prompt = Tokenizer(live_server.model_dir).apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert prompt.rstrip().endswith("<think>")
    kw = {"model": model, "max_tokens": 24, "temperature": 0, "extra_body": EXACT}
    raw = client.completions.create(prompt=prompt, **kw).choices[0].text
    message = client.chat.completions.create(messages=MESSAGES, **kw).choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert (reasoning, message.content) == ReasoningParser(True).parse(raw)
    assert reasoning  # generation starts inside the reasoning
    streamed = list(client.chat.completions.create(messages=MESSAGES, stream=True, **kw))
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == reasoning
    assert "".join(d.content or "" for d in deltas) == message.content


def test_reasoning_then_answer_when_the_model_closes_think(
    client: openai.OpenAI, model: str, live_server: ServerProcess
) -> None:
    """A generation that writes </think> part-way: the text before it is reasoning_content, the text
    after it content, streamed and not. The random tiny model emits </think> only by chance, so the
    test walks fixed seeds (deterministic per seed) until the raw completion contains it."""
    prompt = Tokenizer(live_server.model_dir).apply_chat_template(MESSAGES, add_generation_prompt=True)
    kw = {"model": model, "max_tokens": 200, "temperature": 1.5}
    for seed in range(60):
        raw = client.completions.create(prompt=prompt, seed=seed, **kw).choices[0].text
        before, sep, after = raw.partition("</think>")
        if sep and before.strip() and after.strip():
            break
    else:
        pytest.fail("no seed in 0..59 made the tiny model close its reasoning with content after it")
    message = client.chat.completions.create(messages=MESSAGES, seed=seed, **kw).choices[0].message
    assert (message.model_extra["reasoning_content"], message.content) == ReasoningParser(True).parse(raw)
    assert "</think>" not in message.content and "</think>" not in message.model_extra["reasoning_content"]
    assert message.content.strip() == after.strip()
    streamed = client.chat.completions.create(messages=MESSAGES, seed=seed, stream=True, **kw)
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    assert (
        "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
        == (message.model_extra["reasoning_content"])
    )
    assert "".join(d.content or "" for d in deltas) == message.content


def test_stop_string_is_not_emitted(client: openai.OpenAI, model: str) -> None:
    kw = {"model": model, "prompt": "Hello there", "max_tokens": 20, "temperature": 0, "extra_body": EXACT}
    full = client.completions.create(**kw).choices[0].text
    stop = full[5:8]  # somewhere in the middle, likely across a token boundary
    cut = client.completions.create(**kw, stop=[stop]).choices[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stop=stop, stream=True))
    assert streamed == cut.text


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_tokens": "many"}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"temperature": 3.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"presence_penalty": 9}, "presence_penalty"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"max_tokens": 10**6}, "max_tokens"),  # beyond the context
        # asked-for options the server does not implement: refused, never silently dropped
        ({"tools": [TOOL]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 3}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [CALL]}]},
            "messages.0.tool_calls",
        ),
    ],
)
def test_bad_chat_requests_are_400(client: openai.OpenAI, model: str, kwargs: dict, param: str) -> None:
    body = {"model": model, "messages": MESSAGES, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**body)
    assert err.value.status_code == 400 and err.value.param == param
    assert err.value.body["message"] and err.value.body["type"] == "invalid_request_error"


def test_a_prompt_that_is_not_unicode_is_400(live_server: ServerProcess, model: str) -> None:
    """JSON can escape a lone surrogate (the openai client cannot even encode one; curl can)."""
    text = '"a\\ud800b"'  # the six characters \ud800 inside a JSON string
    for route, body, param in (
        ("completions", f'{{"model": "{model}", "prompt": {text}, "max_tokens": 1}}', "prompt"),
        (
            "chat/completions",
            f'{{"model": "{model}", "messages": [{{"role": "user", "content": {text}}}]}}',
            "messages",
        ),
    ):
        resp = httpx.post(
            f"{live_server.base_url}/v1/{route}", content=body, headers={"Content-Type": "application/json"}
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == param and "lone surrogate" in resp.json()["error"]["message"]
    # an error that quotes the request back (an unknown model) must still be a JSON error, not a 500
    body = '{"model": "m\\ud800", "prompt": "x"}'
    resp = httpx.post(
        f"{live_server.base_url}/v1/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"


def test_unsupported_completion_options_are_400(client: openai.OpenAI, model: str) -> None:
    for kwargs, param in (
        ({"logprobs": 2}, "logprobs"),
        ({"best_of": 2}, "best_of"),
        ({"suffix": "end"}, "suffix"),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=model, prompt="The sea", max_tokens=2, **kwargs)
        assert err.value.param == param


def test_the_off_values_of_unsupported_options_are_served(client: openai.OpenAI, model: str) -> None:
    """Clients that send every field send these: no tools in use, no logprobs, a text response."""
    resp = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=2, tools=[TOOL], tool_choice="none", logprobs=False,
        response_format={"type": "text"},
        extra_body={"functions": [TOOL["function"]], "function_call": "none"},
    )  # fmt: skip
    assert resp.choices[0].finish_reason in ("length", "stop")
    text = client.completions.create(
        model=model, prompt="The sea", max_tokens=2, best_of=1, suffix="", extra_body={"logprobs": False}
    )
    assert text.choices[0].finish_reason in ("length", "stop")


def test_prompt_longer_than_the_context_is_400(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length") as err:
        client.completions.create(model=model, prompt=[5] * 5000, max_tokens=1)
    assert err.value.code == "context_length_exceeded"


def test_token_ids_outside_the_vocabulary_are_400(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        client.completions.create(model=model, prompt=[10**7], max_tokens=1)


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-5", messages=MESSAGES)
    assert err.value.code == "model_not_found"


def test_extreme_sampling_values_are_served(client: openai.OpenAI, model: str) -> None:
    """A top_k past float32's range once failed the engine's step, and every running request with it;
    a vanishing temperature or top_p made every probability NaN, so every token was token 0."""
    kw = {"model": model, "prompt": "The sea", "max_tokens": 6}
    resp = client.completions.create(**kw, extra_body={**EXACT, "top_k": 10**309})
    assert resp.choices[0].finish_reason == "length"
    greedy = client.completions.create(**kw, temperature=0, extra_body=EXACT).choices[0].text
    for extra in ({"temperature": 1e-40}, {"top_p": 1e-46}):
        assert client.completions.create(**kw, extra_body={**EXACT, **extra}).choices[0].text == greedy


def test_unknown_fields_are_ignored_and_null_means_unset(client: openai.OpenAI, model: str) -> None:
    extra = {"frobnicate": True, "n": None, "stream": None, "presence_penalty": None, "stop": None}
    resp = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, extra_body=extra)
    assert resp.choices[0].finish_reason in ("length", "stop")


def test_malformed_json_and_unknown_routes_answer_in_openai_shape(live_server: ServerProcess) -> None:
    headers = {"content-type": "application/json"}
    r = httpx.post(f"{live_server.base_url}/v1/chat/completions", content=b'{"model": ', headers=headers)
    assert r.status_code == 400 and r.json()["error"]["message"] == "the request body is not valid JSON"
    r = httpx.get(f"{live_server.base_url}/v1/nothing-here")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_probes_and_version(live_server: ServerProcess) -> None:
    base = live_server.base_url
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}
    assert httpx.get(f"{base}/ready").json() == {"status": "ready"}
    version = httpx.get(f"{base}/version").json()
    assert version["model"] == live_server.model_dir.name
    assert version["device"] == "cpu" and version["dtype"] == "float32" and version["version"]


def test_metrics_count_every_response_and_pass_promtool(
    live_server: ServerProcess, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MESSAGES)
    text = httpx.get(f"{live_server.base_url}/metrics").text
    name = live_server.model_dir.name
    assert f'inference_requests_total{{code="404",model_name="{name}",route="/v1/chat/completions"}}' in text
    assert f'inference_requests_total{{code="200",model_name="{name}",route="/v1/chat/completions"}}' in text
    for metric in (
        "inference_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
        "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
        "r1serve_engine_step_interval_seconds_bucket", "r1serve_token_delivery_seconds_bucket",
    ):  # fmt: skip
        assert f"\n{metric}{{" in text, metric
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    # promtool's only remark may be the ':' in the vLLM-compatible names, which dashboards rely on.
    colon_remark = "metric names should not contain ':'"
    problems = [
        line for line in (lint.stdout + lint.stderr).splitlines()
        if line.strip() and not (line.startswith("vllm:") and line.endswith(colon_remark))
    ]  # fmt: skip
    assert problems == []


def test_api_key_guards_v1_but_not_probes(start_server) -> None:
    server = start_server(api_key="s3cret")
    url = f"{server.base_url}/v1"
    with (
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.models.list()
    assert httpx.get(f"{url}/models").status_code == 401
    with openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0) as good:
        assert good.models.list().data
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{server.base_url}{path}").status_code == 200


def test_a_body_over_the_limit_is_413_and_nothing_else_is_lost(start_server) -> None:
    server = start_server(max_request_bytes=4096)
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0) as client:
        model = client.models.list().data[0].id
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x" * 8192}])
        assert err.value.status_code == 413 and err.value.code == "request_too_large"
        # No Content-Length (a chunked upload): counted as it arrives.
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "x" * 8192}]}).encode()
        chunked = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            content=iter([body[:3000], body[3000:]]),
            headers={"Content-Type": "application/json"},
        )
        assert chunked.status_code == 413
        assert chunked.json()["error"]["type"] == "invalid_request_error"
        assert chunked.json()["error"]["code"] == "request_too_large"
        # both refusals, the unread one included, count under the route the client called
        metrics = httpx.get(f"{server.base_url}/metrics").text
        counted = [line for line in metrics.splitlines() if line.startswith("inference_requests_total{")]
        assert any('route="/v1/chat/completions"' in line and 'code="413"' in line and line.endswith(" 2.0")
                   for line in counted), counted  # fmt: skip
        reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
        assert reply.choices[0].finish_reason in ("length", "stop")


def test_start_up_imports_what_the_first_stream_would() -> None:
    """The app's start-up (its lifespan, engine loading stubbed out) loads anyio's asyncio backend,
    which Starlette imports on the first streaming response otherwise, inside that request's time to
    first token. A fresh interpreter: this one has it loaded already."""
    code = """
import asyncio, sys
from r1serve.api.app import create_app
from r1serve.api.state import ServerState
from r1serve.config import Settings

ServerState.start_loading = lambda self, loop: None
ServerState.shutdown = lambda self: None
app = create_app(Settings(model="unused"), print)
backend = "anyio._backends._asyncio"

async def main():
    before = backend in sys.modules
    async with app.router.lifespan_context(app):
        print(before, backend in sys.modules)

asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
