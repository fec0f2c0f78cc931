"""The engine on the real tiny model (CPU): continuous batching, chunked prefill, preemption and the
prefix cache must never change what a request generates."""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from r1serve.engine.admission import RequestRejected
from r1serve.engine.async_engine import SWITCH_INTERVAL_S, AsyncEngine, EngineError, RequestStream, TokenEvent
from r1serve.engine.llm_engine import LLMEngine
from r1serve.engine.sequence import FinishReason, SamplingParams, Sequence
from r1serve.model_runner import ModelRunner
from r1serve.packed_step import TokenFeed

BLOCK = 4
MAX_LEN = 64


@pytest.fixture(scope="module")
def runner(tiny_model_dir: Path) -> ModelRunner:
    return ModelRunner(tiny_model_dir, device="cpu", block_size=BLOCK, max_model_len=MAX_LEN, progress=False)


@pytest.fixture(scope="module")
def small_runner(tiny_model_dir: Path, runner: ModelRunner) -> ModelRunner:
    """A KV cache of 20 blocks (80 tokens): four 25-token sequences cannot all fit."""
    return ModelRunner(
        tiny_model_dir, device="cpu", block_size=BLOCK, max_model_len=MAX_LEN,
        kv_cache_memory=20 * runner.block_bytes, progress=False,
    )  # fmt: skip


PROMPTS = [[50 * k + 5 + i for i in range(n)] for k, n in enumerate((3, 10, 17, 9))]
GREEDY = SamplingParams(max_tokens=15, temperature=0.0, ignore_eos=True)


def generate(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams = GREEDY) -> list[list[int]]:
    seqs = [Sequence(list(p), params) for p in prompts]
    for s in seqs:
        engine.add(s)
    while engine.has_work():
        engine.step()
    assert all(s.finish_reason is FinishReason.LENGTH for s in seqs)
    return [s.output_token_ids for s in seqs]


def engine_for(runner: ModelRunner, budget: int = 256, async_scheduling: bool = False) -> LLMEngine:
    return LLMEngine(runner, max_num_seqs=8, max_num_batched_tokens=budget, async_scheduling=async_scheduling)


# Each property below holds in both schedulings: reading a step's tokens back at once, or one step
# later with the next step's input tokens taken from the device (`async_scheduling`).
both = pytest.mark.parametrize("overlap", [False, True], ids=["sync", "async"])


@pytest.fixture(scope="module")
def alone(runner: ModelRunner) -> list[list[int]]:
    return [generate(engine_for(runner), [p])[0] for p in PROMPTS]


@both
def test_batched_matches_one_at_a_time(runner: ModelRunner, alone: list[list[int]], overlap: bool) -> None:
    engine = engine_for(runner, async_scheduling=overlap)
    assert generate(engine, PROMPTS) == alone
    assert engine.block_manager.usage == 0  # every block back


@both
def test_chunked_prefill_and_preemption_do_not_change_outputs(
    small_runner: ModelRunner, alone: list[list[int]], overlap: bool
) -> None:
    engine = engine_for(small_runner, budget=8, async_scheduling=overlap)  # prompts prefilled 8 at a time
    assert generate(engine, PROMPTS) == alone
    assert engine.scheduler.num_preemptions > 0
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_async_scheduling_reports_a_step_one_call_later_and_drops_the_extra_token(
    runner: ModelRunner, alone: list[list[int]]
) -> None:
    """The first step samples every prompt's first token but reports it with the next call, which
    already computes the second from the device; a sequence that stops keeps no token computed past
    its stop, an aborted one reports nothing more, and every block comes back."""
    engine = engine_for(runner, async_scheduling=True)
    stop_at = alone[1][2]
    seqs = [
        Sequence(list(PROMPTS[0]), GREEDY),
        Sequence(list(PROMPTS[1]), SamplingParams(max_tokens=15, temperature=0.0, stop_token_ids=(stop_at,))),
        Sequence(list(PROMPTS[2]), GREEDY),
    ]
    for s in seqs:
        engine.add(s)
    assert engine.step() == []  # launched, not read back
    first = engine.step()
    assert [(r.seq, r.token_id) for r in first] == [(s, a[0]) for s, a in zip(seqs, alone[:3], strict=True)]
    engine.abort(seqs[2])
    reported: dict[int, list[int]] = {s.seq_id: [a[0]] for s, a in zip(seqs, alone, strict=False)}
    while engine.has_work():
        for r in engine.step():
            reported[r.seq.seq_id].append(r.token_id)
    assert seqs[0].output_token_ids == reported[seqs[0].seq_id] == alone[0]
    assert seqs[1].finish_reason is FinishReason.STOP
    assert seqs[1].output_token_ids == reported[seqs[1].seq_id] == alone[1][:3]
    # the aborted one: at most the token of the step that was in flight when it went
    assert seqs[2].finish_reason is FinishReason.ABORT and len(reported[seqs[2].seq_id]) <= 2
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


class TinyCacheRunner:
    """A runner whose KV cache (2 blocks of 4 tokens) is smaller than one sequence's context, which a
    real ModelRunner refuses to build: the scheduler then ends the lone sequence itself. Its logits
    pick the token after each sequence's last input (taken from the TokenFeed when fed)."""

    device, block_size, num_blocks, max_model_len = torch.device("cpu"), 4, 2, 64
    feeds_tokens = True

    def run(self, batch: list, feed: TokenFeed | None = None) -> torch.Tensor:
        last = [s.token_ids[-1] for s in batch]
        if feed is not None:
            for chunk, row in zip(feed.chunks, feed.rows, strict=True):
                last[chunk] = int(feed.tokens[row])
        logits = torch.zeros(len(batch), 100)
        logits[torch.arange(len(batch)), [(t + 1) % 100 for t in last]] = 1.0
        return logits


@both
@pytest.mark.parametrize("stop", [(), (8,)], ids=["length", "stop-token"])
def test_a_sequence_the_cache_cannot_hold_reports_its_last_token_then_its_end(
    overlap: bool, stop: tuple[int, ...]
) -> None:
    """...with the reason its last token gives, if any (async: the scheduler ends it, out of KV
    memory, before that token is read back)."""
    engine = LLMEngine(TinyCacheRunner(), max_num_seqs=4, max_num_batched_tokens=64, async_scheduling=overlap)
    params = SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True, stop_token_ids=stop)
    seq = Sequence(list(range(6)), params)
    engine.add(seq)
    reported, ends = [], []
    while engine.has_work():
        for r in engine.step():
            if r.token_id is not None:
                reported.append(r.token_id)
            if r.seq.is_finished:
                ends.append(r.seq.finish_reason)
    # 8 tokens fill both blocks; the 9th is sampled from them, and no block is left to compute it on
    assert reported == seq.output_token_ids == [6, 7, 8]
    reason = FinishReason.STOP if stop else FinishReason.LENGTH
    assert seq.finish_reason is reason and ends[-1] is reason
    assert engine.block_manager.num_free_blocks == 2


def test_a_failed_step_with_a_step_in_flight_fails_its_sequences_too() -> None:
    """Async scheduling: the step that fails was launched while the previous one was in flight; the
    engine loop then fails every sequence of either (their placeholders are never filled) and every
    block comes back."""
    runner = TinyCacheRunner()
    runner.num_blocks = 16
    engine = LLMEngine(runner, max_num_seqs=4, max_num_batched_tokens=64, async_scheduling=True)
    seqs = [Sequence(list(range(k, k + 5)), SamplingParams(max_tokens=20, temperature=0.0)) for k in (0, 40)]
    for s in seqs:
        engine.add(s)
    engine.step()
    engine.step()
    runner.run = lambda batch, feed=None: (_ for _ in ()).throw(RuntimeError("CUDA error"))
    with pytest.raises(RuntimeError):
        engine.step()
    assert sorted(s.seq_id for s in engine.fail_running()) == sorted(s.seq_id for s in seqs)
    assert all(s.finish_reason is FinishReason.ABORT for s in seqs) and not engine.has_work()
    assert engine.block_manager.num_free_blocks == 16


def test_prefill_cap_while_decoding_does_not_change_outputs(
    runner: ModelRunner, alone: list[list[int]]
) -> None:
    engine = LLMEngine(runner, max_num_seqs=8, max_num_batched_tokens=256, max_prefill_tokens_when_decoding=3)
    first = Sequence(list(PROMPTS[0]), GREEDY)
    engine.add(first)
    engine.step()  # `first` decodes from now on: the other prompts join 3 tokens a step
    rest = [Sequence(list(p), GREEDY) for p in PROMPTS[1:]]
    for s in rest:
        engine.add(s)
    engine.step()
    assert engine.last_batch_tokens == 1 + 3
    while engine.has_work():
        engine.step()
    assert [s.output_token_ids for s in [first, *rest]] == alone


@both
def test_prefix_cache_hit_gives_the_same_tokens(
    runner: ModelRunner, alone: list[list[int]], overlap: bool
) -> None:
    engine = engine_for(runner, async_scheduling=overlap)
    first = generate(engine, [PROMPTS[2]])
    again = Sequence(list(PROMPTS[2]), GREEDY)
    engine.add(again)
    while engine.has_work():
        engine.step()
    assert again.num_cached_tokens == 16  # 4 full blocks of the 17-token prompt
    assert [again.output_token_ids] == first == [alone[2]]


@both
def test_seeded_request_is_reproducible_inside_any_batch(runner: ModelRunner, overlap: bool) -> None:
    seeded = SamplingParams(max_tokens=10, temperature=1.0, seed=1234, ignore_eos=True)
    a = generate(engine_for(runner), [PROMPTS[1]], seeded)[0]
    engine = engine_for(runner, async_scheduling=overlap)
    seqs = [Sequence(list(PROMPTS[1]), seeded), Sequence(list(PROMPTS[0]), SamplingParams(max_tokens=10))]
    for s in seqs:
        engine.add(s)
    while engine.has_work():
        engine.step()
    assert seqs[0].output_token_ids == a


@both
def test_stop_token_ids_and_eos_end_the_sequence(
    runner: ModelRunner, alone: list[list[int]], overlap: bool
) -> None:
    stop_at = alone[0][3]
    params = SamplingParams(max_tokens=15, temperature=0.0, stop_token_ids=(stop_at,))
    engine = engine_for(runner, async_scheduling=overlap)
    s = Sequence(list(PROMPTS[0]), params)
    engine.add(s)
    while engine.has_work():
        engine.step()
    assert s.finish_reason is FinishReason.STOP and s.output_token_ids[-1] == stop_at
    eos = Sequence(list(PROMPTS[0]), SamplingParams(max_tokens=15, temperature=0.0), frozenset({stop_at}))
    engine.add(eos)
    while engine.has_work():
        engine.step()
    assert eos.output_token_ids == s.output_token_ids


@both
def test_penalized_requests_run_through_the_engine(runner: ModelRunner, overlap: bool) -> None:
    """Penalties rewrite the step's logits in place (they once raised: inference tensors outside
    inference mode). A presence penalty far above the tiny model's logit spread makes greedy decoding
    pick a token it has not produced yet, every step."""
    engine = engine_for(runner, async_scheduling=overlap)
    params = SamplingParams(max_tokens=16, temperature=0.0, presence_penalty=2.0, ignore_eos=True)
    seqs = [Sequence(list(PROMPTS[0]), params), Sequence(list(PROMPTS[1]), GREEDY)]
    for s in seqs:
        engine.add(s)
    while engine.has_work():
        engine.step()
    penalized = seqs[0].output_token_ids
    assert len(penalized) == 16 and len(set(penalized)) == 16


def test_prompt_too_long_is_rejected_up_front(runner: ModelRunner) -> None:
    with pytest.raises(RequestRejected, match="context"):
        engine_for(runner).check(MAX_LEN)


def test_async_engine_survives_a_failing_step(runner: ModelRunner) -> None:
    """A token id outside the vocabulary makes the real model raise: that request fails, others go on."""

    async def scenario() -> tuple[Exception | None, list[int]]:
        engine = AsyncEngine(engine_for(runner), max_queue=8)
        engine.start(asyncio.get_running_loop())
        try:
            bad = engine.add_request([runner.config.vocab_size + 5], GREEDY, frozenset())
            error = None
            try:
                async for _ in bad:
                    pass
            except EngineError as exc:
                error = exc
            good = engine.add_request(list(PROMPTS[0]), GREEDY, frozenset())
            tokens = [t async for event in good for t in event.token_ids]
            return error, tokens
        finally:
            engine.stop()

    error, tokens = asyncio.run(scenario())
    assert isinstance(error, EngineError)
    assert len(tokens) == 15


def test_a_consumer_behind_the_engine_takes_every_waiting_token_at_once() -> None:
    """Events the consumer has not read yet merge into one (one SSE chunk under load), in order, timed
    from the oldest token's step (the delivery histogram shows how far behind it was); an error still
    comes after the tokens delivered before it."""

    async def scenario() -> tuple[list[TokenEvent], list[int], Exception | None]:
        stream = RequestStream(None, 0)  # type: ignore[arg-type]  # its engine is needed only to abort
        events = aiter(stream)
        for token in (1, 2, 3):
            stream.events.put_nowait(TokenEvent([token], emitted=100.0 + token))
        merged = [await anext(events)]
        stream.events.put_nowait(TokenEvent([4]))
        merged.append(await anext(events))  # one waiting: as it was
        stream.events.put_nowait(TokenEvent([5]))
        stream.events.put_nowait(TokenEvent([6], FinishReason.LENGTH))
        merged.append(await anext(events))

        broken = RequestStream(None, 2)  # type: ignore[arg-type]
        for event in (TokenEvent([7]), TokenEvent([8]), TokenEvent([], error=EngineError("rank 1 died"))):
            broken.events.put_nowait(event)
        tokens: list[int] = []
        error = None
        try:
            async for event in broken:
                tokens += event.token_ids
        except EngineError as exc:
            error = exc
        return merged, tokens, error

    merged, tokens, error = asyncio.run(scenario())
    assert [e.token_ids for e in merged] == [[1, 2, 3], [4], [5, 6]]
    assert [e.finish_reason for e in merged] == [None, None, FinishReason.LENGTH]
    assert merged[0].emitted == 101.0
    assert tokens == [7, 8] and str(error) == "rank 1 died"


def test_async_engine_shortens_the_gil_switch_interval_while_it_runs(runner: ModelRunner) -> None:
    before = sys.getswitchinterval()

    async def scenario() -> float:
        engine = AsyncEngine(engine_for(runner), max_queue=8)
        engine.start(asyncio.get_running_loop())
        try:
            return sys.getswitchinterval()
        finally:
            engine.stop()

    assert asyncio.run(scenario()) <= SWITCH_INTERVAL_S < before
    assert sys.getswitchinterval() == before


class StuckRunner:
    """The real runner, whose steps wait while `go` is clear: a step stuck at a collective whose peer
    died, which NCCL can do and gloo on the CPU cannot (so this stands in for it)."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.device, self.block_size = runner.device, runner.block_size
        self.num_blocks, self.max_model_len = runner.num_blocks, runner.max_model_len
        self.go = threading.Event()
        self.go.set()

    def run(self, batch: list) -> torch.Tensor:
        self.go.wait()
        return self.runner.run(batch)


class _ThreadKiller(BaseException):
    """Not an Exception, so EngineCore's recovery does not catch it: what ends the engine thread."""


class DyingRunner(StuckRunner):
    """The real runner until `die` is set; then its step raises what ends the engine thread."""

    def __init__(self, runner: ModelRunner) -> None:
        super().__init__(runner)
        self.die = threading.Event()

    def run(self, batch: list) -> torch.Tensor:
        if self.die.is_set():
            raise _ThreadKiller("gone")
        return self.runner.run(batch)


def test_a_dead_engine_thread_fails_the_streams_instead_of_hanging(runner: ModelRunner) -> None:
    failures: list[str] = []
    dying = DyingRunner(runner)
    threading_excepthook = threading.excepthook
    threading.excepthook = lambda args: None  # the thread's death is the point: keep the log quiet

    async def scenario() -> list[str]:
        engine = AsyncEngine(engine_for(dying), max_queue=8, on_failure=failures.append)
        engine.start(asyncio.get_running_loop())
        errors = []
        try:
            stream = engine.add_request(
                list(PROMPTS[0]), SamplingParams(max_tokens=40, ignore_eos=True), frozenset()
            )
            try:
                async for _ in stream:
                    dying.die.set()
            except EngineError as exc:
                errors.append(str(exc))
            return errors
        finally:
            engine.stop()

    try:
        errors = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    finally:
        threading.excepthook = threading_excepthook
    assert errors == ["the engine thread died: _ThreadKiller: gone"]
    assert failures == errors


def test_engine_failure_ends_every_stream_and_later_requests(runner: ModelRunner) -> None:
    """`fail` (a dead tensor-parallel rank, called from its monitor thread; the engine process calls it
    too): the stream in flight gets the error although the engine loop is stuck in a step, a later
    request fails at once, and `on_failure` (the server's exit) runs once."""
    failures: list[str] = []
    stuck = StuckRunner(runner)
    killers: list[threading.Thread] = []

    async def scenario() -> tuple[list[Exception], int]:
        engine = AsyncEngine(engine_for(stuck), max_queue=8, on_failure=failures.append)
        engine.start(asyncio.get_running_loop())
        errors: list[Exception] = []
        tokens = 0
        try:
            params = SamplingParams(max_tokens=40, ignore_eos=True)
            long = engine.add_request(list(PROMPTS[0]), params, frozenset())
            try:
                async for event in long:
                    tokens += len(event.token_ids)
                    if tokens >= 2 and stuck.go.is_set():  # events may carry several tokens
                        stuck.go.clear()
                        killers.append(threading.Thread(target=engine.fail, args=("rank 1 died",)))
                        killers[-1].start()
            except EngineError as exc:
                errors.append(exc)
            later = engine.add_request(list(PROMPTS[1]), GREEDY, frozenset())
            try:
                async for _ in later:
                    pass
            except EngineError as exc:
                errors.append(exc)
            return errors, tokens
        finally:
            stuck.go.set()
            engine.stop()

    errors, tokens = asyncio.run(scenario())
    # the streams may end before `fail`'s thread reaches on_failure, which it calls after ending them
    for killer in killers:
        killer.join(timeout=30)
    assert [str(e) for e in errors] == ["rank 1 died", "rank 1 died"]
    assert 2 <= tokens < 40
    assert failures == ["rank 1 died"]


def test_the_engine_loop_reports_its_pace_between_back_to_back_steps(runner: ModelRunner) -> None:
    """`EngineStats.step_interval`: 0 for a step after idle (no previous step to measure from), the
    seconds since the previous step's start while the engine steps back to back."""
    from r1serve.engine.core import EngineCore

    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    adds = iter(
        [[("add", 1, PROMPTS[0], params, frozenset())], [("add", 2, PROMPTS[1], params, frozenset())]]
    )
    stepped: list[float] = []
    emitted: list[float] = []

    def receive(block: bool):  # each request arrives while the engine is idle; then stop
        return next(adds, None) if block else []

    def emit(events, stats) -> None:
        if stats.batch_size:
            stepped.append(stats.step_interval)
            emitted.append(stats.emitted)

    EngineCore(engine_for(runner)).run(receive, emit)
    # two idle spells, four steps after each (a prefill and three decodes)
    assert len(stepped) == 8
    assert stepped[0] == 0 and stepped[4] == 0
    assert all(x > 0 for i, x in enumerate(stepped) if i not in (0, 4))
    # each step's hand-over is stamped on the host's monotonic clock (the API process times delivery)
    assert all(0 < a < b <= time.monotonic() for a, b in itertools.pairwise(emitted))
