"""SSE chunks: a request's template gives, byte for byte, what serialising the whole payload gives."""

from __future__ import annotations

import json

import pytest
from r1serve.api.generation import TEXT_SLOT, SSETemplate, sse

TEXTS = ["", " hello", 'a "quote", a \\', "line\nbreak\ttab", "中文 ü é 🙂", "\x00\x1f", "</think>"]


@pytest.mark.parametrize("text", TEXTS)
def test_a_template_fills_in_the_text_exactly_as_json_would(text: str) -> None:
    def payload(value: str) -> dict:
        delta = {"content": value}
        choice = {"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}
        return {"id": "chatcmpl-1", "created": 1, "model": 'm "x"', "choices": [choice]}

    chunk = SSETemplate(payload(TEXT_SLOT))(text)
    assert chunk == sse(payload(text))
    assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
    assert json.loads(chunk[6:])["choices"][0]["delta"]["content"] == text
