"""A request inside the engine: its tokens, its KV blocks and how it should be sampled."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from functools import cached_property

SAMPLING_EPS = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 = off
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    # Cached (read per row every step): a frozen instance never changes, and a cached_property stores
    # straight into the instance dict, which a frozen dataclass allows.
    @cached_property
    def greedy(self) -> bool:
        # A temperature or top_p this small is greedy in effect, and in float32 (the sampler's settings)
        # dividing by a temperature of 1e-40 overflows to inf and a top_p of 1e-46 is 0: either made
        # every probability NaN, and the token always 0.
        return self.temperature < SAMPLING_EPS or self.top_k == 1 or self.top_p < SAMPLING_EPS

    @cached_property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(StrEnum):
    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"  # max_tokens, the context length or no KV memory left for a lone sequence
    ABORT = "abort"  # client went away, or a stop string was found downstream


_ids = itertools.count()


@dataclass(eq=False, slots=True)
class Sequence:
    token_ids: list[int]  # prompt, then the generated tokens
    params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    seq_id: int = field(default_factory=lambda: next(_ids))
    num_prompt_tokens: int = -1
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    # Tokens whose K/V is in the cache (prefix-cache hits included); the rest still need computing.
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prefix-cache hits at the last admission (reported, not used for logic)
    block_table: list[int] = field(default_factory=list)
    num_hashed_blocks: int = 0  # leading blocks of block_table registered in the prefix cache
    block_hashes: list[int] = field(
        default_factory=list
    )  # prefix-chained hashes of its full blocks (a cache)
    arrival_time: float = field(default_factory=time.monotonic)
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        self.token_ids = list(self.token_ids)
        if self.num_prompt_tokens < 0:
            self.num_prompt_tokens = len(self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def last_token_id(self) -> int:
        return self.token_ids[-1]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self) - self.num_computed_tokens

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def check_finished(self, max_model_len: int, n: int | None = None) -> FinishReason | None:
        """Why the sequence ends after its `n`th token (default: its last), if it does."""
        tokens, params = self.token_ids, self.params
        n = len(tokens) if n is None else n
        last = tokens[n - 1]
        if last in params.stop_token_ids or (last in self.eos_token_ids and not params.ignore_eos):
            return FinishReason.STOP
        if n - self.num_prompt_tokens >= params.max_tokens or n >= max_model_len:
            return FinishReason.LENGTH
        return None
