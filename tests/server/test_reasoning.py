"""Reasoning parser: <think>...</think> -> reasoning_content, the rest -> content, cut anywhere."""

import random

import pytest
from r1serve.reasoning import ReasoningParser

CASES = [
    # (prompt ended with "<think>\n", generated text, expected (reasoning, content))
    (True, "Let me think.\n</think>\n\nThe answer is 4.", ("Let me think.\n", "\n\nThe answer is 4.")),
    (False, "<think>plan</think>answer", ("plan", "answer")),
    (True, "<think>plan</think>answer", ("plan", "answer")),  # explicit tag despite the template
    (True, "still thinking </thi", ("still thinking </thi", "")),  # cut off by max_tokens
    (False, "no reasoning at all <think>", ("", "no reasoning at all <think>")),
    (True, "a</think>b</think>c", ("a", "b</think>c")),  # only the first close tag counts
    (True, "", ("", "")),
    (False, "  <think>x</think>", ("x", "")),
]


@pytest.mark.parametrize(("starts", "text", "expected"), CASES)
def test_whole_text(starts: bool, text: str, expected: tuple[str, str]) -> None:
    assert ReasoningParser(starts).parse(text) == expected


@pytest.mark.parametrize(("starts", "text", "expected"), CASES)
def test_any_chunking_gives_the_same_split(starts: bool, text: str, expected: tuple[str, str]) -> None:
    rng = random.Random(0)
    chunkings = [[1] * len(text)] + [
        [rng.randint(1, 5) for _ in range(len(text))] for _ in range(100)
    ]  # one char at a time, then random cuts (including inside the tags)
    for sizes in chunkings:
        parser, reasoning, content, pos = ReasoningParser(starts), "", "", 0
        for size in sizes:
            if pos >= len(text):
                break
            r, c = parser.feed(text[pos : pos + size])
            reasoning, content, pos = reasoning + r, content + c, pos + size
        r, c = parser.flush()
        assert (reasoning + r, content + c) == expected, sizes


def test_tag_split_across_deltas_is_never_emitted() -> None:
    parser = ReasoningParser(True)
    assert parser.feed("idea <") == ("idea ", "")
    assert parser.feed("/thi") == ("", "")
    assert parser.feed("nk>ok") == ("", "ok")


def test_saw_reasoning_only_when_there_was_some() -> None:
    parser = ReasoningParser(False)
    parser.parse("plain answer")
    assert not parser.saw_reasoning
    parser = ReasoningParser(False)
    parser.parse("<think>x</think>y")
    assert parser.saw_reasoning
