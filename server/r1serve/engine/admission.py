"""Whether a prompt can ever be served: a function of the engine's sizes alone, so the API process
of an engine process checks prompts without asking it (and without importing torch)."""

from __future__ import annotations

from r1serve.engine.block_manager import blocks_for


class RequestRejected(ValueError):
    """A request the engine can never serve (too long for the context or the KV cache)."""


def check_prompt(num_prompt_tokens: int, max_model_len: int, num_blocks: int, block_size: int) -> None:
    """Raise RequestRejected when a prompt of this length can never be served."""
    if num_prompt_tokens < 1:
        raise RequestRejected("the prompt is empty")
    if num_prompt_tokens >= max_model_len:
        raise RequestRejected(
            f"the prompt has {num_prompt_tokens} tokens; this model's context is {max_model_len} "
            "tokens including the output"
        )
    if blocks_for(num_prompt_tokens + 1, block_size) > num_blocks:
        raise RequestRejected(
            f"the prompt has {num_prompt_tokens} tokens; the KV cache holds at most {num_blocks * block_size}"
        )
