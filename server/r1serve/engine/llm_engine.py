"""One engine step: schedule, run the model over the packed batch, sample, account.

Single-threaded by design; `AsyncEngine` runs it in its own thread, or `engine_process` in its own
process.

A launched step appends a placeholder for each token it samples; reading the tokens back (the
step's one host sync) fills them in. With `async_scheduling` that read waits one step: step n+1 is
scheduled and launched first, its input tokens taken from step n's sampled tensor on the device
(`TokenFeed`), so the host's bookkeeping runs while the GPU computes instead of between steps. Step
n's results then come back from the call that launched step n+1. A sequence that ends on step n's
token has had one more token computed for nothing; that token is dropped. Requests with penalties
(the sampler counts their tokens on the host) make the engine read the previous step back first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch

from r1serve.engine.admission import check_prompt
from r1serve.engine.block_manager import BlockManager
from r1serve.engine.sampler import Sampler, to_device
from r1serve.engine.scheduler import ScheduledChunk, Scheduler, sampled_rows
from r1serve.engine.sequence import FinishReason, Sequence
from r1serve.model_runner import ScheduledSeq
from r1serve.packed_step import TokenFeed

PLACEHOLDER = 0  # a token still being sampled: a valid id, so its step is packed and checked as usual


class Runner(Protocol):
    """What the engine needs from r1serve.model_runner.ModelRunner."""

    device: torch.device
    block_size: int
    num_blocks: int
    max_model_len: int

    def run(self, batch: list[ScheduledSeq]) -> torch.Tensor: ...


@dataclass
class InFlight:
    """A launched step whose sampled tokens have not been read back yet."""

    seqs: list[Sequence]  # the sequences it samples, in the order of `tokens`
    slots: list[int]  # where each one's placeholder sits in its token_ids
    tokens: torch.Tensor | None  # their sampled ids, on the runner's device (None: nothing sampled)
    # The same ids on their way to the host: copied right after sampling, so reading them back waits
    # for this step only (a `.tolist()` of `tokens` would queue behind the step launched since).
    host: torch.Tensor | None = None
    copied: torch.cuda.Event | None = None


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
        async_scheduling: bool = False,
    ) -> None:
        self.runner = runner
        # the runner must take input tokens from the device (one process: tensor-parallel workers
        # are sent the step's token ids, which would not be known yet)
        self.async_scheduling = async_scheduling and getattr(runner, "feeds_tokens", False)
        self._in_flight: InFlight | None = None
        self.max_model_len = runner.max_model_len
        self.block_manager = BlockManager(runner.num_blocks, runner.block_size)
        self.scheduler = Scheduler(
            self.block_manager,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_prefill_tokens_when_decoding=max_prefill_tokens_when_decoding,
            step_sizes=getattr(runner, "mixed_step_sizes", ()),
        )
        self.sampler = Sampler()
        self.generators: dict[int, torch.Generator] = {}
        self.last_batch_size = 0
        self.last_batch_tokens = 0
        self.last_step_times = StepTimes()
        self._sync_seconds = 0.0

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
        return self.scheduler.has_work() or self._in_flight is not None

    @torch.inference_mode()  # the logits are inference tensors: penalties update them in place
    def step(self) -> list[StepResult]:
        clock = time.perf_counter
        t0 = clock()
        scheduler = self.scheduler
        results: list[StepResult] = []
        self._sync_seconds = 0.0
        previous = self._in_flight
        if previous is not None and any(s.params.has_penalties for s in previous.seqs):
            results += self._read_back(previous)  # penalties count its tokens on the host
            previous = None
        chunks = scheduler.schedule()
        self.last_batch_size = len(chunks)
        self.last_batch_tokens = sum(c.num_tokens for c in chunks)
        t1 = clock()
        launched, times = self._launch(chunks, previous) if chunks else (None, (t1, t1, t1))
        t4 = clock()
        if previous is not None:
            results += self._read_back(previous)
        t5 = clock()
        scheduler.complete(*chunks)  # after the read-back: the blocks it fills hash real tokens
        t6 = clock()
        if launched is not None and not self.async_scheduling:
            results += self._read_back(launched)
        else:
            self._in_flight = launched
        # Cleared only once this step has succeeded: a failed step must not lose these streams' ends.
        for seq in scheduler.finished:
            results.append(StepResult(seq, None))
            self.generators.pop(seq.seq_id, None)
        scheduler.finished.clear()
        t2, t3, _ = times
        read_back = clock() - t6 + t5 - t4  # with its wait for the GPU, counted as "sync"
        self.last_step_times = StepTimes(
            t1 - t0, t2 - t1, t3 - t2, t4 - t3, t6 - t5, self._sync_seconds, read_back - self._sync_seconds
        )  # fmt: skip
        return results

    def _launch(
        self, chunks: list[ScheduledChunk], previous: InFlight | None
    ) -> tuple[InFlight, tuple[float, float, float]]:
        """Runs the model over the chunks and queues the sampling; appends a placeholder for each
        sampled token. Returns the step and the clock after building, running and sampling."""
        clock = time.perf_counter
        batch = [
            ScheduledSeq(c.seq.token_ids[c.start : c.start + c.num_tokens], c.start, c.seq.block_table)
            for c in chunks
        ]
        feed = None if previous is None else self._feed(chunks, previous)
        t2 = clock()
        logits = self.runner.run(batch) if feed is None else self.runner.run(batch, feed)
        t3 = clock()
        rows = sampled_rows(chunks)
        seqs = [chunks[i].seq for i in rows]
        tokens = None
        if rows:
            if len(rows) < len(chunks):  # a prompt chunk short of its end samples nothing
                logits = logits.index_select(0, to_device(rows, torch.int64, logits.device))
            params = [s.params for s in seqs]
            tokens = self.sampler.sample(
                logits,
                params,
                [s.output_token_ids if p.has_penalties else [] for s, p in zip(seqs, params, strict=True)],
                [self.generators.get(s.seq_id) for s in seqs] if self.generators else [None] * len(seqs),
            )
        slots = []
        for seq in seqs:
            slots.append(len(seq.token_ids))
            seq.token_ids.append(PLACEHOLDER)
        step = InFlight(seqs, slots, tokens, tokens)
        if tokens is not None and tokens.is_cuda:
            step.host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            step.host.copy_(tokens, non_blocking=True)
            step.copied = torch.cuda.Event()
            step.copied.record()
        return step, (t2, t3, clock())

    @staticmethod
    def _feed(chunks: list[ScheduledChunk], previous: InFlight) -> TokenFeed | None:
        """The chunks whose last token is a placeholder of the step still in flight: a decode of a
        sequence that step sampled."""
        if previous.tokens is None:
            return None
        row_of = {
            (s.seq_id, slot): i for i, (s, slot) in enumerate(zip(previous.seqs, previous.slots, strict=True))
        }
        fed, rows = [], []
        for i, c in enumerate(chunks):
            row = row_of.get((c.seq.seq_id, c.start + c.num_tokens - 1))
            if row is not None:
                fed.append(i)
                rows.append(row)
        return TokenFeed(previous.tokens, fed, rows) if fed else None

    def _read_back(self, step: InFlight) -> list[StepResult]:
        """Waits for a step's sampled tokens (the host sync), writes them over its placeholders and
        ends the sequences they end."""
        t0 = time.perf_counter()
        if step.copied is not None:
            step.copied.synchronize()
        sampled: list[int] = [] if step.host is None else step.host.tolist()
        self._sync_seconds = time.perf_counter() - t0
        if step is self._in_flight:
            self._in_flight = None
        results = []
        for seq, slot, token_id in zip(step.seqs, step.slots, sampled, strict=True):
            # aborted, or ended by an earlier token while this one was computed: nothing to report
            if seq.finish_reason is FinishReason.ABORT or slot >= len(seq.token_ids):
                continue
            seq.token_ids[slot] = token_id
            reason = seq.check_finished(self.max_model_len, slot + 1)
            if seq.is_finished:
                # the scheduler ended it meanwhile (out of KV memory): its token still says why
                if reason is FinishReason.STOP:
                    seq.finish_reason = reason
            elif reason is not None:
                del seq.token_ids[slot + 1 :]  # a placeholder of the step launched since
                self.scheduler.finish(seq, reason)
                self.generators.pop(seq.seq_id, None)
            results.append(StepResult(seq, token_id))
        return results

    def fail_running(self) -> list[Sequence]:
        """After a failed step: drop every running sequence (their state is unknown) and free its
        blocks, and every sequence of a step still in flight (preempted ones wait with a placeholder)."""
        failed = list(self.scheduler.running)
        if self._in_flight is not None:
            failed += [s for s in self._in_flight.seqs if not s.is_finished and s not in failed]
            self._in_flight = None
        for seq in failed:
            self.abort(seq)
        return failed
