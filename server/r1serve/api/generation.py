"""One request through the engine, shared by /v1/chat/completions and /v1/completions.

Turns the engine's tokens into text deltas (incremental detokenizer, stop strings), keeps the
timing metrics, and aborts the sequence (freeing its KV blocks) the moment the request ends for any
reason: a stop string, a client that disconnects, or an error.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import TypeVar

from fastapi import Request

from r1serve.api.drain import RETRY_AFTER_SECONDS
from r1serve.api.errors import APIError, error_body
from r1serve.api.schemas import SamplingFields
from r1serve.api.state import ServerState
from r1serve.engine.admission import RequestRejected
from r1serve.engine.async_engine import EngineError, QueueFull, RequestStream
from r1serve.engine.sequence import FinishReason, SamplingParams
from r1serve.engine.stop_strings import StopStringMatcher

T = TypeVar("T")


def sampling_params(
    req: SamplingFields, state: ServerState, num_prompt_tokens: int, default_max_tokens: int | None = None
) -> SamplingParams:
    """The request's sampling settings, checked against the context; the checkpoint's defaults fill gaps."""
    runner = state.runner
    max_len = runner.max_model_len
    if num_prompt_tokens >= max_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_len} tokens. However, your prompt has "
            f"{num_prompt_tokens} tokens. Please shorten the prompt.",
            param=prompt_param(req),
            code="context_length_exceeded",
        )
    room = max_len - num_prompt_tokens
    limit = req.output_limit
    if limit is None:
        limit = room if default_max_tokens is None else min(default_max_tokens, room)
    elif limit > room:
        raise APIError(
            400,
            f"This model's maximum context length is {max_len} tokens. However, you requested "
            f"{num_prompt_tokens + limit} tokens ({num_prompt_tokens} in the prompt, {limit} for the "
            "completion). Please reduce the prompt or max_tokens.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    defaults = runner.generation_defaults
    return SamplingParams(
        max_tokens=limit,
        temperature=defaults.temperature if req.temperature is None else req.temperature,
        top_p=defaults.top_p if req.top_p is None else req.top_p,
        top_k=defaults.top_k if req.top_k is None else max(req.top_k, 0),
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        stop=req.stop_list,
        stop_token_ids=tuple(req.stop_token_ids or ()),
        ignore_eos=req.ignore_eos,
    )


def prompt_param(req: SamplingFields) -> str:
    return "messages" if hasattr(req, "messages") else "prompt"


def check_token_ids(token_ids: list[int], vocab_size: int, param: str) -> None:
    bad = next((t for t in token_ids if t >= vocab_size), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is outside the vocabulary (size {vocab_size})", param=param)


def finish_reason_name(reason: FinishReason | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason is FinishReason.LENGTH else "stop"


class Generation:
    """Text deltas of one request; `finish_reason` and `num_tokens` are set as it runs."""

    def __init__(
        self, state: ServerState, prompt_ids: list[int], params: SamplingParams, arrived: float | None = None
    ) -> None:
        """`arrived`: perf_counter() when the request arrived (metrics.ARRIVED_KEY), where TTFT and
        E2E start; now if not given."""
        self.arrived = time.perf_counter() if arrived is None else arrived
        engine = state.require_ready()
        runner = state.runner
        eos = frozenset(runner.generation_defaults.eos_token_ids)
        try:
            self.stream: RequestStream = engine.add_request(prompt_ids, params, eos)
        except QueueFull as exc:
            raise APIError(
                429, f"the server is at capacity ({exc}); retry later", code="queue_full",
                retry_after=RETRY_AFTER_SECONDS,
            ) from exc  # fmt: skip
        except RequestRejected as exc:
            raise APIError(400, str(exc), param="prompt", code="context_length_exceeded") from exc
        self.state = state
        self.id = uuid.uuid4().hex
        self.created = int(time.time())
        self.num_prompt_tokens = len(prompt_ids)
        self.num_tokens = 0
        self.finish_reason: str | None = None
        self._detok = runner.tokenizer.detokenizer(prompt_ids)
        self._stops = StopStringMatcher(params.stop)

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.num_prompt_tokens,
            "completion_tokens": self.num_tokens,
            "total_tokens": self.num_prompt_tokens + self.num_tokens,
        }

    async def deltas(self) -> AsyncIterator[str]:
        metrics, name = self.state.metrics, self.state.model_name
        ttft, itl = metrics.ttft.labels(name), metrics.itl.labels(name)  # once, not per token
        delivery = metrics.token_delivery.labels(name)
        start = last = self.arrived
        try:
            if delay := self.state.settings.test_delay_seconds:
                await asyncio.sleep(delay)  # test only: see Settings.test_delay_seconds
            async for event in self.stream:
                if event.emitted and event.token_ids:
                    delivery.observe(time.monotonic() - event.emitted)
                text = ""
                for token_id in event.token_ids:
                    now = time.perf_counter()
                    (itl if self.num_tokens else ttft).observe(now - last)
                    last = now
                    self.num_tokens += 1
                    text += self._stops.feed(self._detok.push(token_id))
                    if self._stops.stopped:
                        break
                if self._stops.stopped:
                    self.finish_reason = "stop"
                elif event.finish_reason is not None:
                    text += self._stops.feed(self._detok.finish())
                    text += self._stops.flush()
                    self.finish_reason = (
                        "stop" if self._stops.stopped else finish_reason_name(event.finish_reason)
                    )
                if text:
                    yield text
                if self.finish_reason is not None:
                    return
        finally:
            self.stream.abort()  # no-op if finished; else a stop string, disconnect or error: free KV now
            metrics.prompt_tokens.labels(name).inc(self.num_prompt_tokens)
            metrics.generation_tokens.labels(name).inc(self.num_tokens)
            if self.finish_reason is not None:
                metrics.e2e.labels(name).observe(time.perf_counter() - start)

    async def text(self) -> str:
        async with aclosing(self.deltas()) as deltas:
            return "".join([delta async for delta in deltas])


class ClientGone(Exception):
    pass


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and so its generation) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        raise ClientGone
    return task.result()


def engine_error(exc: EngineError) -> APIError:
    return APIError(500, str(exc), code="engine_error")


def _dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def sse(payload: dict) -> bytes:
    return b"data: " + _dumps(payload) + b"\n\n"


TEXT_SLOT = "\x00r1serve-text\x00"  # where SSETemplate's text goes: no real text holds NULs


class SSETemplate:
    """The SSE chunks of one request that differ only in one text field: `payload` with `TEXT_SLOT` where
    the text goes is serialised once, and each chunk fills in only the text. Per token that is one
    string's JSON instead of a dict's (~1.0 us against ~4.5 us on the dev VM): a streamed token's
    whole API cost is ~55 us, paid one stream after another on the event loop."""

    def __init__(self, payload: dict) -> None:
        self._head, self._tail = sse(payload).split(_dumps(TEXT_SLOT))

    def __call__(self, text: str) -> bytes:
        return self._head + _dumps(text) + self._tail


SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_error(exc: Exception) -> bytes:
    return sse(error_body(500, str(exc), code="engine_error"))
