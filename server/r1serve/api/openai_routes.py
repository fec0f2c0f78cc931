"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from jinja2 import TemplateError

from r1serve.api.auth import require_api_key
from r1serve.api.errors import APIError
from r1serve.api.generation import (
    SSE_DONE,
    SSE_HEADERS,
    TEXT_SLOT,
    ClientGone,
    Generation,
    SSETemplate,
    check_token_ids,
    engine_error,
    sampling_params,
    sse,
    sse_error,
    unless_disconnected,
)
from r1serve.api.metrics import ARRIVED_KEY, LATE_STATUS_KEY
from r1serve.api.schemas import ChatCompletionRequest, CompletionRequest
from r1serve.api.state import ServerState
from r1serve.engine.async_engine import EngineError
from r1serve.reasoning import THINK_START, ReasoningParser

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
CLIENT_CLOSED = 499  # nginx's "client closed request": counted, but not as a server error
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint


def _state(request: Request) -> ServerState:
    return request.app.state.server


@router.get("/models")
async def list_models(request: Request) -> dict:
    state = _state(request)
    state.require_ready()
    return {
        "object": "list",
        "data": [
            {
                "id": state.model_name,
                "object": "model",
                "created": state.created,
                "owned_by": "r1serve",
                "max_model_len": state.runner.max_model_len,
            }
        ],
    }


def _prompt(state: ServerState, body: ChatCompletionRequest) -> str:
    # "developer" is OpenAI's newer name for "system"; R1 templates know only the latter.
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
    ]
    try:
        return state.runner.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except (TemplateError, ValueError) as exc:
        raise APIError(400, f"messages: {exc}", param="messages") from exc


async def _encode(state: ServerState, text: str, param: str) -> list[int]:
    """The prompt's token ids; a 400 for text that is not Unicode. JSON can carry a lone surrogate
    ("\\ud800"), which the tokenizer refuses with a TypeError: a client's mistake, not a 500."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(400, f"{param} holds a lone surrogate: it is not valid Unicode", param=param) from exc
    return await state.runner.tokenizer.encode_off_loop(text)


async def _collect(request: Request, gen: Generation) -> str | Response:
    try:
        return await unless_disconnected(request, gen.text())
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    except EngineError as exc:
        raise engine_error(exc) from exc


def _streaming(request: Request, chunks: AsyncIterator[bytes]) -> StreamingResponse:
    async def guarded() -> AsyncIterator[bytes]:
        try:
            # aclosing: a client that disconnects closes this generator; the inner ones (and with them
            # the engine sequence and its KV blocks) must close right then, not whenever GC runs.
            async with aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
        except EngineError as exc:
            request.scope[LATE_STATUS_KEY] = 500
            yield sse_error(exc)
        yield SSE_DONE

    return StreamingResponse(guarded(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = _state(request)
    state.require_ready()
    state.check_model(body.model)
    prompt = _prompt(state, body)
    prompt_ids = await _encode(state, prompt, "messages")
    gen = Generation(
        state, prompt_ids, sampling_params(body, state, len(prompt_ids)), request.scope.get(ARRIVED_KEY)
    )
    starts_in_reasoning = prompt.rstrip().endswith(THINK_START)
    base = {"id": f"chatcmpl-{gen.id}", "created": gen.created, "model": state.model_name}

    if not body.stream:
        text = await _collect(request, gen)
        if isinstance(text, Response):
            return text
        parser = ReasoningParser(starts_in_reasoning)
        reasoning, content = parser.parse(text)
        message = {"role": "assistant", "content": content}
        if parser.saw_reasoning:
            message["reasoning_content"] = reasoning
        choice = {"index": 0, "message": message, "finish_reason": gen.finish_reason, "logprobs": None}
        return {**base, "object": "chat.completion", "choices": [choice], "usage": gen.usage}

    def payload(delta: dict, finish_reason: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**base, "object": "chat.completion.chunk", "choices": [choice]}

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        return sse(payload(delta, finish_reason))

    # nearly every token's chunk: reasoning or content alone
    reasoning_chunk = SSETemplate(payload({"reasoning_content": TEXT_SLOT}))
    content_chunk = SSETemplate(payload({"content": TEXT_SLOT}))

    async def events() -> AsyncIterator[bytes]:
        parser = ReasoningParser(starts_in_reasoning)
        yield chunk({"role": "assistant", "content": ""})
        async with aclosing(gen.deltas()) as deltas:
            async for text in deltas:
                reasoning, content = parser.feed(text)
                if reasoning and content:  # the token that ends the reasoning
                    yield chunk(_reasoning_delta(reasoning, content))
                elif reasoning:
                    yield reasoning_chunk(reasoning)
                elif content:
                    yield content_chunk(content)
        if delta := _reasoning_delta(*parser.flush()):
            yield chunk(delta)
        yield chunk({}, gen.finish_reason)
        if body.include_usage:
            yield sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": gen.usage})

    return _streaming(request, events())


def _reasoning_delta(reasoning: str, content: str) -> dict:
    delta = {}
    if reasoning:
        delta["reasoning_content"] = reasoning
    if content:
        delta["content"] = content
    return delta


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    state = _state(request)
    state.require_ready()
    state.check_model(body.model)
    tokenizer = state.runner.tokenizer
    if isinstance(body.prompt, str):
        prompt_ids = await _encode(state, body.prompt, "prompt")
    else:
        check_token_ids(body.prompt, tokenizer.vocab_size, "prompt")
        prompt_ids = list(body.prompt)
    if not prompt_ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    params = sampling_params(body, state, len(prompt_ids), COMPLETIONS_DEFAULT_MAX_TOKENS)
    gen = Generation(state, prompt_ids, params, request.scope.get(ARRIVED_KEY))
    base = {
        "id": f"cmpl-{gen.id}",
        "object": "text_completion",
        "created": gen.created,
        "model": state.model_name,
    }
    echo = ""
    if body.echo:
        echo = body.prompt if isinstance(body.prompt, str) else tokenizer.decode(prompt_ids, False)

    if not body.stream:
        text = await _collect(request, gen)
        if isinstance(text, Response):
            return text
        choice = {"index": 0, "text": echo + text, "finish_reason": gen.finish_reason, "logprobs": None}
        return {**base, "choices": [choice], "usage": gen.usage}

    def payload(text: str, finish_reason: str | None = None) -> dict:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        return {**base, "choices": [choice]}

    chunk = SSETemplate(payload(TEXT_SLOT))  # every chunk but the last

    async def events() -> AsyncIterator[bytes]:
        if echo:
            yield chunk(echo)
        async with aclosing(gen.deltas()) as deltas:
            async for text in deltas:
                yield chunk(text)
        yield sse(payload("", gen.finish_reason))
        if body.include_usage:
            yield sse({**base, "choices": [], "usage": gen.usage})

    return _streaming(request, events())
