"""Tokenizer and chat template against transformers, and the streaming detokenizer's guarantees."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import jinja2
import pytest
from r1serve.tokenizer import Tokenizer, compile_chat_template
from transformers import AutoTokenizer

TOOL_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "Why is the sky blue?"}],
    "system": [
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "Name three rivers.\nOne per line."},
    ],
    "multi-turn drops earlier reasoning": [
        {"role": "user", "content": "What is 7 x 8?"},
        {"role": "assistant", "content": "<think>\n7 x 8 = 56\n</think>\n\n56"},
        {"role": "user", "content": "And 12 squared? 日本語 😀"},
    ],
    "tool outputs": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Checking."},
        {"role": "tool", "content": "rain, 8 C"},
        {"role": "tool", "content": "wind 5 m/s"},
        {"role": "assistant", "content": "Rainy and windy.", "reasoning_content": "look at the outputs"},
    ],
}


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def hf_tok(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_like_transformers(
    tok: Tokenizer, hf_tok, name: str, add_generation_prompt: bool
) -> None:
    messages = CONVERSATIONS[name]
    ours = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    theirs = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == theirs
    assert tok.encode(ours) == hf_tok(theirs, add_special_tokens=False).input_ids


def test_template_errors_like_transformers(tok: Tokenizer, hf_tok) -> None:
    """transformers drops `content: None`, and R1's template then cannot render an assistant tool call:
    both fail the same way (a jinja2 TemplateError, which the API reports as a client error)."""
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
    ]
    with pytest.raises(jinja2.TemplateError):
        hf_tok.apply_chat_template(messages, tokenize=False)
    with pytest.raises(jinja2.TemplateError):
        tok.apply_chat_template(messages)


def test_r1_prompt_opens_the_think_block(tok: Tokenizer) -> None:
    prompt = tok.apply_chat_template(CONVERSATIONS["multi-turn drops earlier reasoning"])
    # the earlier turn's reasoning is cut at </think>, as in R1's template
    first_turn = "<｜User｜>What is 7 x 8?<｜Assistant｜>\n\n56<｜end▁of▁sentence｜>"
    assert prompt.startswith("<｜begin▁of▁sentence｜>" + first_turn)
    assert prompt.endswith("<｜Assistant｜><think>\n")
    ids = tok.encode(prompt)
    assert ids[0] == tok.bos_token_id
    assert ids[-2] == tok.token_id("<think>")  # one token, so the model only has to emit </think>
    assert tok.token_id("</think>") is not None


def test_encode_decode_like_transformers(tok: Tokenizer, hf_tok) -> None:
    text = "Hello, world! Ünïcödé, 中文 and emoji 🚀.\n\tcode: x = [1, 2, 3]"
    assert tok.encode(text) == hf_tok(text, add_special_tokens=False).input_ids
    assert tok.encode(text, add_special_tokens=True) == hf_tok(text).input_ids
    ids = tok.encode("<｜User｜>hi<think>\nok</think>done<｜end▁of▁sentence｜>")
    # special tokens are dropped, <think> / </think> are kept (the reasoning parser needs them)
    assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True) == "hi<think>\nok</think>done"
    assert tok.decode(ids, skip_special_tokens=False) == hf_tok.decode(ids)
    assert tok.eos_token_id == hf_tok.eos_token_id
    assert tok.vocab_size == len(hf_tok)


def test_encode_off_loop_tokenises_on_another_thread_with_the_same_ids(tok: Tokenizer) -> None:
    text = "Hello, world! " * 200
    seen: list[int] = []
    encode = tok.encode

    def recording(*args, **kwargs) -> list[int]:
        seen.append(threading.get_ident())
        return encode(*args, **kwargs)

    async def main() -> tuple[list[int], int]:
        return await tok.encode_off_loop(text), threading.get_ident()

    tok.encode = recording
    try:
        ids, loop_thread = asyncio.run(main())
    finally:
        del tok.encode
    assert ids == tok.encode(text) and len(ids) > 200
    assert seen and loop_thread not in seen  # the event loop stayed free to deliver other streams


def test_template_helpers_match_transformers() -> None:
    template = compile_chat_template(
        "{{ messages | tojson }}{% if strftime_now('%Y') | int < 2000 %}old{% endif %}"
        "{% if not messages %}{{ raise_exception('no messages') }}{% endif %}"
    )
    # tojson keeps non-ASCII and does not HTML-escape, like transformers' override
    assert template.render(messages=[{"content": "<b>é</b>"}]) == '[{"content": "<b>é</b>"}]'
    with pytest.raises(jinja2.TemplateError, match="no messages"):
        template.render(messages=[])


def test_no_chat_template_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((tiny_model_dir / "tokenizer.json").read_bytes())
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer(tmp_path).apply_chat_template(CONVERSATIONS["single"])


def _stream(tok: Tokenizer, ids: list[int], prompt: list[int]) -> tuple[list[str], str]:
    detok = tok.detokenizer(prompt)
    deltas = [detok.push(i) for i in ids]
    return deltas, detok.finish()


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Zürich, São Paulo, Kraków, Ελλάδα, Россия, 北京, 東京, 서울 🌍🚀👩‍💻",
    "<think>\nLet me think: 2 + 2 = 4.\n</think>\n\nThe answer is **4**.",
    "mixed: café ☕ naïve 🎉 — “quotes” … and tabs\t\tand  spaces   end",
]


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_detokenizer_streams_whole_characters(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    prompt = tok.encode(tok.apply_chat_template(CONVERSATIONS["single"]))
    deltas, rest = _stream(tok, ids, prompt)
    assert "".join(deltas) + rest == tok.decode(ids) == text
    # valid UTF-8 in, so no delta may carry a replacement character (half a character)
    assert not any("\ufffd" in d for d in deltas)
    assert sum(1 for d in deltas if d) > 1  # it really streams


def test_replacement_characters_in_the_text_stream_and_are_not_held_to_the_end(tok: Tokenizer) -> None:
    """U+FFFD is also a character a model can write: a run of them once held every delta back until
    the request ended, decoding a window that grew with each token (quadratic, on the event loop)."""
    text = "broken: " + "\ufffd" * 300 + " end"
    ids = tok.encode(text)
    deltas, rest = _stream(tok, ids, [])
    assert "".join(deltas) + rest == text
    assert len("".join(deltas)) >= len(text) - 8 and sum(1 for d in deltas if d) > 10


@pytest.mark.parametrize("run", [2, 5, 7, 10])
def test_a_character_split_at_the_release_of_a_long_hold_is_kept(tok: Tokenizer, run: int) -> None:
    """The forced release of a run of U+FFFD must not cut a real character that follows it in two."""
    text = "\ufffd" * run + "\U0001f600 ok"
    deltas, rest = _stream(tok, tok.encode(text), [])
    assert "".join(deltas) + rest == text


def test_incremental_detokenizer_property_on_random_tokens(tok: Tokenizer) -> None:
    """Arbitrary token sequences (split multi-byte characters, special tokens): the concatenated
    deltas always equal decode(all)."""
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 30))]
        for skip in (True, False):
            detok = tok.detokenizer(skip_special_tokens=skip)
            streamed = "".join(detok.push(i) for i in ids) + detok.finish()
            assert streamed == tok.decode(ids, skip_special_tokens=skip)
