"""Request bodies, validated as OpenAI does; unknown fields are ignored, bad values are a 400.

OpenAI options this server does not implement (tool calling, log probabilities, structured output,
best_of, suffix) are a 400 when asked for, not ignored: a client that asked would otherwise read an
answer without them as if they had been honoured. Their "off" values (no tools, logprobs false, a
text response format) pass, since many clients send every field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

NonNegInt = Annotated[int, Field(ge=0)]


def _unsupported(what: str, why: str = "") -> ValueError:
    return ValueError(f"{what} is not supported by this server" + (f": {why}" if why else ""))


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="extension: -1 or 0 = off")
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop_token_ids: list[NonNegInt] | None = Field(None, description="extension")
    ignore_eos: bool = Field(False, description="extension: keep generating past EOS (benchmarks)")
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: object) -> object:
        # Some clients send every field, unset ones as null: treat null as "not given".
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 16:
            raise ValueError("at most 16 stop sequences")
        return stop

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[dict] | None = None

    @field_validator("tool_calls")
    @classmethod
    def _no_tool_calls(cls, calls: list[dict] | None) -> list[dict] | None:
        if calls:  # the prompt could not show them: the model would answer a conversation it never saw
            raise _unsupported("tool calling")
        return calls

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tool_choice: str | dict | None = None  # before tools: their validator reads it
    tools: list[dict] | None = None
    function_call: str | dict | None = None  # the same for the older functions
    functions: list[dict] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: dict | None = None

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, tools: list[dict] | None, info: ValidationInfo) -> list[dict] | None:
        choice = info.data.get("tool_choice" if info.field_name == "tools" else "function_call")
        if tools and choice != "none":
            raise _unsupported("tool calling")
        return tools

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | int | None) -> bool | int | None:
        if value:
            raise _unsupported("logprobs")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, fmt: dict | None) -> dict | None:
        if fmt and fmt.get("type", "text") != "text":
            raise _unsupported(f"response_format {fmt.get('type')!r}", "the model answers in free text")
        return fmt

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[NonNegInt] | list[str] = Field(description="one prompt: text or token ids")
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("logprobs", mode="before")
    @classmethod
    def _no_logprobs(cls, value: object) -> None:
        # false is off; 0 asks for the chosen tokens' log probabilities
        if value is not None and value is not False:
            raise _unsupported("logprobs")
        return None

    @field_validator("best_of")
    @classmethod
    def _one_candidate(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only best_of=1 is supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise _unsupported("suffix (insertion)")
        return value

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[int] | list[str]) -> str | list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ValueError("only one prompt per request is supported")
            return prompt[0]
        if isinstance(prompt, list) and not prompt:
            raise ValueError("the prompt is empty")
        return prompt

    @property
    def output_limit(self) -> int | None:
        return self.max_tokens
