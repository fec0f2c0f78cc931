"""Engine-level cases: batch-1 decode and offline throughput, timed step by step."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from r1serve.engine.llm_engine import LLMEngine
from r1serve.engine.sequence import SamplingParams, Sequence
from r1serve.model_runner import ModelRunner
from rich.progress import Progress

MAX_MODEL_LEN = 4096
MAX_NUM_BATCHED_TOKENS = 8192


@dataclass
class StepLog:
    seconds: float
    batch: int
    tokens: int
    context_tokens: int  # KV tokens the step's attention read
    phases: dict[str, float]  # LLMEngine.last_step_times: host seconds by phase ("sync": waiting for the GPU)


def build_engine(
    model_dir: Path,
    *,
    max_num_seqs: int,
    enforce_eager: bool,
    tensor_parallel_size: int = 1,
    async_scheduling: bool = False,
) -> LLMEngine:
    runner = ModelRunner(
        model_dir, max_model_len=MAX_MODEL_LEN, enforce_eager=enforce_eager, max_num_seqs=max_num_seqs,
        tensor_parallel_size=tensor_parallel_size,
    )  # fmt: skip
    runner.warmup()
    return LLMEngine(
        runner, max_num_seqs=max_num_seqs, max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS,
        async_scheduling=async_scheduling,
    )  # fmt: skip


def make_sequences(requests: list[tuple[int, int]], vocab: int) -> list[Sequence]:
    """Greedy, EOS-ignored sequences of random prompt tokens (seed 0), one per (prompt_len, output_len)."""
    rng = random.Random(0)
    seqs = []
    for prompt_len, output_len in requests:
        params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
        seqs.append(Sequence([rng.randrange(vocab) for _ in range(prompt_len)], params))
    return seqs


def run_requests(
    engine: LLMEngine, requests: list[tuple[int, int]], *, label: str
) -> tuple[list[StepLog], float, int]:
    """Adds every (prompt_len, output_len) request at once, runs to completion; returns step logs,
    wall seconds and output tokens."""
    seqs = make_sequences(requests, engine.runner.config.vocab_size)
    for seq in seqs:
        engine.add(seq)
    logs: list[StepLog] = []
    total_out = sum(o for _, o in requests)
    torch.cuda.synchronize()
    start = time.perf_counter()
    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total_out)
        while engine.has_work():
            running = engine.scheduler.running
            t0 = time.perf_counter()
            results = engine.step()  # ends with the sampler's .tolist(): a device sync
            dt = time.perf_counter() - t0
            ctx = sum(len(s) for s in running)
            phases = asdict(engine.last_step_times)
            logs.append(StepLog(dt, engine.last_batch_size, engine.last_batch_tokens, ctx, phases))
            bar.advance(task, sum(1 for r in results if r.token_id is not None))
    wall = time.perf_counter() - start
    assert all(s.num_output_tokens == o for s, (_, o) in zip(seqs, requests, strict=True))
    return logs, wall, total_out


def decode_steps(logs: list[StepLog]) -> list[StepLog]:
    # (batch 0: with async scheduling, the last call only reads the last step back)
    return [s for s in logs if s.tokens == s.batch > 0]


def phase_ms(steps: list[StepLog]) -> dict[str, float]:
    """Mean host milliseconds per step by engine phase: where a step's time goes. On a GPU "sync" is the
    wait for the sampled tokens, i.e. GPU time the host did not overlap; the rest is host work the GPU
    may sit idle through."""
    if not steps:
        return {}
    return {k: 1e3 * sum(s.phases[k] for s in steps) / len(steps) for k in steps[0].phases}


def bandwidth_utilisation(
    logs: list[StepLog], weight_bytes: int, kv_token_bytes: int, copy_bw: float
) -> float:
    steps = decode_steps(logs)
    moved = sum(weight_bytes + s.context_tokens * kv_token_bytes for s in steps)
    seconds = sum(s.seconds for s in steps)
    return moved / seconds / copy_bw if seconds else 0.0


def offline_requests(n: int = 256, lo: int = 100, hi: int = 1024, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(n)]


def graph_step_ms(engine: LLMEngine, batch: int = 1, iters: int = 100) -> float:
    """GPU time of one captured decode step alone (no scheduling, sampling or Python between steps)."""
    graphs = engine.runner.graphs
    if graphs is None or engine.runner.tp.size > 1:  # rank 0's graph alone would wait for the others
        return float("nan")
    size = next(s for s in graphs.sizes if s >= batch)
    graph = graphs.graphs[size]
    for _ in range(5):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters
