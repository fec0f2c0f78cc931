"""One engine step: schedule, run the model over the packed batch, sample, account.

Synchronous and single-threaded by design; `AsyncEngine` runs it in its own thread, or
`engine_process` in its own process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch

from r1serve.engine.block_manager import BlockManager, blocks_for
from r1serve.engine.sampler import Sampler, to_device
from r1serve.engine.scheduler import Scheduler, sampled_rows
from r1serve.engine.sequence import Sequence
from r1serve.model_runner import ScheduledSeq


class Runner(Protocol):
    """What the engine needs from r1serve.model_runner.ModelRunner."""

    device: torch.device
    block_size: int
    num_blocks: int
    max_model_len: int

    def run(self, batch: list[ScheduledSeq]) -> torch.Tensor: ...


class RequestRejected(ValueError):
    """A request the engine can never serve (too long for the context or the KV cache)."""


def check_prompt(num_prompt_tokens: int, max_model_len: int, num_blocks: int, block_size: int) -> None:
    """Raise RequestRejected when a prompt of this length can never be served. A function of the
    engine's sizes alone, so the API process of an engine process checks without asking it."""
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


@dataclass(slots=True)
class StepResult:
    seq: Sequence
    token_id: int | None  # None when the sequence ended without a new token (scheduler-finished)


@dataclass
class StepTimes:
    """Host seconds of the last step by phase (bench/host_overhead.py reads them). On a GPU `run` and
    `sample` only queue kernels, `complete` runs while the GPU computes, and `sync` is the wait for the
    sampled tokens; on the CPU every kernel runs where it is called."""

    schedule: float = 0.0
    build: float = 0.0  # the packed batch handed to the runner
    run: float = 0.0
    sample: float = 0.0
    complete: float = 0.0  # the chunks' K/V accounted, blocks entered in the prefix cache
    sync: float = 0.0
    account: float = 0.0  # tokens appended, finished sequences released


class LLMEngine:
    def __init__(
        self,
        runner: Runner,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_prefill_tokens_when_decoding: int = 0,
    ) -> None:
        self.runner = runner
        self.max_model_len = runner.max_model_len
        self.block_manager = BlockManager(runner.num_blocks, runner.block_size)
        self.scheduler = Scheduler(
            self.block_manager,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_prefill_tokens_when_decoding=max_prefill_tokens_when_decoding,
        )
        self.sampler = Sampler()
        self.generators: dict[int, torch.Generator] = {}
        self.last_batch_size = 0
        self.last_batch_tokens = 0
        self.last_step_times = StepTimes()

    def check(self, num_prompt_tokens: int) -> None:
        """Raise RequestRejected when a prompt of this length can never be served."""
        bm = self.block_manager
        check_prompt(num_prompt_tokens, self.max_model_len, bm.num_blocks, bm.block_size)

    def add(self, seq: Sequence) -> None:
        self.check(seq.num_prompt_tokens)
        if seq.params.seed is not None:
            self.generators[seq.seq_id] = torch.Generator(self.runner.device).manual_seed(seq.params.seed)
        self.scheduler.add(seq)

    def abort(self, seq: Sequence) -> bool:
        self.generators.pop(seq.seq_id, None)
        return self.scheduler.abort(seq)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    @torch.inference_mode()  # the logits are inference tensors: penalties update them in place
    def step(self) -> list[StepResult]:
        clock = time.perf_counter
        t0 = clock()
        scheduler = self.scheduler
        chunks = scheduler.schedule()
        # Cleared only once this step has succeeded: a failed step must not lose these streams' ends.
        results = [StepResult(seq, None) for seq in scheduler.finished]
        self.last_batch_size = len(chunks)
        self.last_batch_tokens = sum(c.num_tokens for c in chunks)
        t1 = clock()
        if not chunks:
            self.last_step_times = StepTimes(schedule=t1 - t0)
            scheduler.finished.clear()
            return results
        batch = [
            ScheduledSeq(c.seq.token_ids[c.start : c.start + c.num_tokens], c.start, c.seq.block_table)
            for c in chunks
        ]
        t2 = clock()
        logits = self.runner.run(batch)
        t3 = clock()
        rows = sampled_rows(chunks)
        tokens = None
        if rows:
            if len(rows) < len(chunks):  # a prompt chunk short of its end samples nothing
                logits = logits.index_select(0, to_device(rows, torch.int64, logits.device))
            seqs = [chunks[i].seq for i in rows]
            params = [s.params for s in seqs]
            tokens = self.sampler.sample(
                logits,
                params,
                [s.output_token_ids if p.has_penalties else [] for s, p in zip(seqs, params, strict=True)],
                [self.generators.get(s.seq_id) for s in seqs] if self.generators else [None] * len(seqs),
            )
        t4 = clock()
        # While the GPU still computes: this bookkeeping needs no sampled token.
        scheduler.complete(*chunks)
        t5 = clock()
        sampled: list[int] = [] if tokens is None else tokens.tolist()  # the step's one host sync
        t6 = clock()
        max_model_len = self.max_model_len
        for i, token_id in zip(rows, sampled, strict=True):
            seq = chunks[i].seq
            seq.token_ids.append(token_id)
            reason = seq.check_finished(max_model_len)
            if reason is not None:
                scheduler.finish(seq, reason)
                self.generators.pop(seq.seq_id, None)
            results.append(StepResult(seq, token_id))
        scheduler.finished.clear()
        self.last_step_times = StepTimes(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, clock() - t6)
        return results

    def fail_running(self) -> list[Sequence]:
        """After a failed step: drop every running sequence (their state is unknown) and free its blocks."""
        failed = list(self.scheduler.running)
        for seq in failed:
            self.abort(seq)
        return failed
