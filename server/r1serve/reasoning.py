"""Split DeepSeek-R1 output into `reasoning_content` (inside <think>...</think>) and `content`.

R1 chat templates end the prompt with "<think>\\n", so generation usually starts inside the
reasoning and the model emits only "</think>"; a model may also open with an explicit "<think>".
The parser is incremental: feed it text deltas cut anywhere (even inside a tag) and it returns
(reasoning, content) deltas whose concatenation is the same as parsing the whole text at once.
"""

from __future__ import annotations

THINK_START = "<think>"
THINK_END = "</think>"


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningParser:
    def __init__(self, starts_in_reasoning: bool = True) -> None:
        self._reasoning_default = starts_in_reasoning
        self._state = "start"  # start -> reasoning -> content, or start -> content
        self._held = ""
        self.saw_reasoning = starts_in_reasoning

    def feed(self, delta: str) -> tuple[str, str]:
        text = self._held + delta
        self._held = ""
        reasoning = content = ""
        if self._state == "start":
            stripped = text.lstrip()
            if stripped.startswith(THINK_START):
                self._state, self.saw_reasoning = "reasoning", True
                text = stripped[len(THINK_START) :]
            elif THINK_START.startswith(stripped):  # blank so far, or a cut "<thi": undecided
                self._held = text
                return "", ""
            else:
                self._state = "reasoning" if self._reasoning_default else "content"
        if self._state == "reasoning":
            end = text.find(THINK_END)
            if end < 0:
                keep = _partial_tag(text, THINK_END)
                self._held = text[len(text) - keep :] if keep else ""
                return text[: len(text) - keep], ""
            reasoning, text = text[:end], text[end + len(THINK_END) :]
            self._state = "content"
        content = text
        return reasoning, content

    def flush(self) -> tuple[str, str]:
        """What is still held back when the output ends."""
        held, self._held = self._held, ""
        if self._state == "reasoning" or (self._state == "start" and self._reasoning_default):
            return held, ""
        return "", held

    def parse(self, text: str) -> tuple[str, str]:
        """Whole-text convenience: (reasoning, content)."""
        r1, c1 = self.feed(text)
        r2, c2 = self.flush()
        return r1 + r2, c1 + c2
