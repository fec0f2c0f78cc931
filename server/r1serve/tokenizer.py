"""The checkpoint's tokenizer (tokenizer.json via `tokenizers`) and chat template (jinja2).

The template is rendered in the same sandboxed jinja2 environment transformers builds for
`apply_chat_template`, so a prompt is byte-for-byte what the model was trained on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from r1serve.checkpoint import CheckpointError, read_json

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False
) -> str:
    # jinja's own tojson escapes HTML characters, which would change the prompt
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def compile_chat_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _token_content(value: Any) -> str | None:
    # tokenizer_config.json stores special tokens as a string or as an AddedToken dict
    if isinstance(value, Mapping):
        return value.get("content")
    return value


def _chat_template_source(model_dir: Path, config: Mapping[str, Any]) -> str | None:
    # transformers 5 saves the template next to the config; older checkpoints embed it
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    return template if isinstance(template, str) else None


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _normalise_message(message: Mapping[str, Any]) -> dict[str, Any]:
    # as transformers' apply_chat_template: keys whose value is None are dropped (so `content: null`
    # reads as undefined), and reasoning given under any of its names is visible under all of them
    out = {k: v for k, v in message.items() if v is not None}
    reasoning = next((out[k] for k in _REASONING_FIELDS if k in out), None)
    if reasoning is not None:
        out = {"thinking": reasoning, **out, "reasoning_content": reasoning}
    return out


class Tokenizer:
    def __init__(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{model_dir}: missing tokenizer.json")
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise CheckpointError(f"{path}: unreadable tokenizer ({e})") from e
        config_path = model_dir / "tokenizer_config.json"
        config = read_json(config_path) if config_path.is_file() else {}
        self.special_tokens: dict[str, str] = {
            name: content
            for name in _SPECIAL_NAMES
            if (content := _token_content(config.get(name))) is not None
        }
        self.chat_template_source = _chat_template_source(model_dir, config)
        self._template: jinja2.Template | None = None
        if self.chat_template_source is not None:
            try:  # compiled now so a broken template fails at load, not on the first request
                self._template = compile_chat_template(self.chat_template_source)
            except jinja2.TemplateSyntaxError as e:
                detail = " ".join(str(e).split())  # jinja messages can span lines; ours are one line
                raise CheckpointError(f"{model_dir}: chat template does not compile ({detail})") from e
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_id(self.special_tokens["bos_token"]) if "bos_token" in self.special_tokens else None

    @property
    def eos_token_id(self) -> int | None:
        return self.token_id(self.special_tokens["eos_token"]) if "eos_token" in self.special_tokens else None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Rendered chat prompts already contain the BOS token, hence the default."""
        # encode_batch releases the GIL while it works; encode does not (measured with tokenizers 0.23)
        return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    async def encode_off_loop(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """`encode` on a worker thread, for the API's event loop: tokenising a prompt of thousands of
        tokens takes milliseconds, and on the loop it would hold up every stream the process delivers."""
        return await asyncio.to_thread(self.encode, text, add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for a conversation; raises `jinja2.TemplateError` (a client error) if the
        template rejects it."""
        if self._template is None:
            raise ValueError("this model has no chat template (tokenizer_config.json has no chat_template)")
        return self._template.render(
            messages=[_normalise_message(m) for m in messages],
            tools=None if tools is None else [dict(t) for t in tools],
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
            **kwargs,
        )

    def detokenizer(
        self, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True
    ) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, prompt_ids, skip_special_tokens)


class IncrementalDetokenizer:
    """Turns generated tokens into text deltas for streaming.

    Decodes a short window of recent tokens and emits only what is new, holding text back while it
    ends in an incomplete UTF-8 sequence (U+FFFD), so a delta never carries half a character.
    `"".join(deltas) + finish()` equals `decode(all generated ids)`.
    """

    # tokens of context kept before the unemitted ones: decoders that merge across tokens
    # (byte-level, leading-space handling) need a few neighbours to decode a suffix correctly
    _CONTEXT = 6
    _MAX_HELD = 8

    def __init__(
        self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True
    ):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-self._CONTEXT :])
        self._generated: list[int] = []
        self._prefix = 0  # start of the decode window in _ids
        self._read = len(self._ids)  # tokens before this were already emitted
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        self._generated.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        end = len(self._ids)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            if end - self._read < self._MAX_HELD:
                return ""  # maybe the first bytes of a character the next tokens complete
            # Held this long, the U+FFFD is in the text itself: holding on would stall the stream and
            # decode an ever longer window on the event loop. Release all but the last 3 tokens,
            # which hold the first bytes of any character still incomplete (4 bytes at most).
            end -= 3
            new_text = self._decode(self._ids[self._prefix : end])
        delta = new_text[len(prefix_text) :]
        self._prefix = max(self._read, end - self._CONTEXT)
        self._read = end
        self.text += delta
        return delta

    def finish(self) -> str:
        """Whatever is still held back (e.g. a trailing incomplete character), so the total is exact."""
        full = self._decode(self._generated)
        rest = full[len(self.text) :] if full.startswith(self.text) else ""
        self.text += rest
        return rest
