"""python -m bench.host_overhead: the engine's host (Python) cost per step, measured without a GPU.

It drives the real LLMEngine (scheduler, block manager, sampler, sequences) over the offline case of
`python -m bench` (256 requests, prompt and output lengths uniform in 100-1024, seed 0, greedy, EOS
ignored, max_num_seqs 256, max_num_batched_tokens as there) with a stand-in runner that returns random
logits at once. That isolates the host cost; the GPU cost is what `python -m bench` measures on the GPU
machine. It also times the host preparation that ModelRunner does before the GPU can start:
`ModelRunner._pack` for a mixed step of the run (on the tiny model: its cost depends on
the batch, not the weights) and `stage_decode_inputs`, the host half of a CUDA-graph decode step, at
batch 256.

On the CPU the sampler's arithmetic runs on the CPU as well (an argmax over [batch, 151936] float32
logits); on a GPU that part is a few kernel launches plus the step's one host sync. `--vocab 1000`
leaves the sampler's Python cost alone.

    .venv/bin/python -m bench.host_overhead [--profile 25] [--vocab 151936]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch
from r1serve.cuda_graphs import MIXED_GRAPH_TOKENS, stage_decode_inputs, stage_mixed_inputs
from r1serve.engine.llm_engine import LLMEngine, StepTimes
from r1serve.model_runner import ModelRunner, ScheduledSeq
from rich.table import Table

from bench import console, engine_cases

QWEN_VOCAB = 151936  # DeepSeek-R1-Distill-Qwen: the sampler's work grows with it
BLOCK_SIZE = 16
MAX_NUM_SEQS = 256


class InstantRunner:
    """Stands in for ModelRunner: no model, no device; every step returns rows of one random logits
    tensor (drawn once, so drawing it is not timed). Keeps a copy of the first mixed batch with at
    least half the sequences decoding and of the first full decode batch, for timing ModelRunner's
    own host preparation afterwards."""

    def __init__(self, vocab: int, num_blocks: int) -> None:
        self.device = torch.device("cpu")
        self.block_size = BLOCK_SIZE
        self.num_blocks = num_blocks
        self.max_model_len = engine_cases.MAX_MODEL_LEN
        self.logits = torch.randn(MAX_NUM_SEQS, vocab, generator=torch.Generator().manual_seed(0))
        self.mixed: list[ScheduledSeq] = []
        self.decode: list[ScheduledSeq] = []

    def run(self, batch: list[ScheduledSeq]) -> torch.Tensor:
        decode_rows = sum(len(s.token_ids) == 1 for s in batch)
        if decode_rows == len(batch) == MAX_NUM_SEQS and not self.decode:
            self.decode = _copy(batch)
        elif MAX_NUM_SEQS // 2 <= decode_rows < len(batch) and not self.mixed:
            self.mixed = _copy(batch)
        return self.logits[: len(batch)]


def _copy(batch: list[ScheduledSeq]) -> list[ScheduledSeq]:
    # block_table is the sequence's live list, which later steps grow and free
    return [ScheduledSeq(list(s.token_ids), s.start_pos, list(s.block_table)) for s in batch]


def ms_stats(seconds: list[float]) -> tuple[float, float, float]:
    """Mean, P50 and P99 in milliseconds."""
    ordered = sorted(seconds)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return 1e3 * sum(ordered) / len(ordered), 1e3 * pick(0.5), 1e3 * pick(0.99)


def repeat(fn: Callable[[], object], times: int) -> list[float]:
    out = []
    for _ in range(times):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run_offline(vocab: int, profile: int) -> tuple[LLMEngine, list[StepTimes], float, int]:
    requests = engine_cases.offline_requests()
    # Room for every request at once, as on the H100 (no preemptions): the host cost of the case itself.
    num_blocks = sum(-(-(p + o) // BLOCK_SIZE) for p, o in requests) + MAX_NUM_SEQS
    runner = InstantRunner(vocab, num_blocks)
    engine = LLMEngine(
        runner, max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=engine_cases.MAX_NUM_BATCHED_TOKENS
    )
    for seq in engine_cases.make_sequences(requests, vocab):
        engine.add(seq)
    times: list[StepTimes] = []
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    while engine.has_work():
        engine.step()
        times.append(engine.last_step_times)
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - start
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)
    return engine, times, wall, sum(o for _, o in requests)


def runner_prep(runner: InstantRunner) -> list[tuple[str, list[float]]]:
    """Host seconds of ModelRunner._pack on a mixed step and of the graph staging."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from r1serve.tiny_model import write_tiny_model

        model = ModelRunner(
            write_tiny_model(Path(tmp)), device="cpu", block_size=BLOCK_SIZE, progress=False,
            max_model_len=engine_cases.MAX_MODEL_LEN, kv_cache_memory=32 * 2**20,
        )  # fmt: skip
    vocab, blocks = model.config.vocab_size, model.num_blocks
    # Same shape, ids folded into the tiny model's ranges: the cost depends on the counts, not the ids.
    mixed = [
        ScheduledSeq([t % vocab for t in s.token_ids], s.start_pos, [b % blocks for b in s.block_table])
        for s in runner.mixed
    ]
    tokens = sum(len(s.token_ids) for s in mixed)
    label = f"ModelRunner._pack, mixed step ({len(mixed)} seqs, {tokens} tokens)"
    rows.append((label, repeat(lambda: model._pack(mixed), 50)))
    small = mixed[: MIXED_GRAPH_TOKENS[-1] // 8]  # a mixed step that fits the largest graph
    step = model._pack([ScheduledSeq(s.token_ids[:8], s.start_pos, s.block_table) for s in small])
    mixed_host = torch.zeros(len(mixed) * 8 + MAX_NUM_SEQS * (5 + step.tables.shape[1]), dtype=torch.int64)
    size = next(t for t in MIXED_GRAPH_TOKENS if t >= step.num_tokens)
    rows.append((
        f"MixedGraphs staging (stage_mixed_inputs), {step.count} seqs, {step.num_tokens} tokens",
        repeat(lambda: stage_mixed_inputs(
            mixed_host.numpy(), step, size=size, max_seqs=MAX_NUM_SEQS, scratch_slot=0
        ), 200),
    ))  # fmt: skip

    decode = runner.decode
    width = -(-engine_cases.MAX_MODEL_LEN // BLOCK_SIZE)
    host = torch.zeros(MAX_NUM_SEQS * (4 + width), dtype=torch.int64).numpy()
    token_ids = [s.token_ids[0] for s in decode]
    positions = [s.start_pos for s in decode]
    tables = [s.block_table for s in decode]

    def stage() -> int:
        return stage_decode_inputs(
            host, token_ids, positions, tables,
            size=MAX_NUM_SEQS, width=width, scratch_block=runner.num_blocks, block_size=BLOCK_SIZE,
        )  # fmt: skip

    rows.append((f"DecodeGraphs staging (stage_decode_inputs), batch {len(decode)}", repeat(stage, 200)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.host_overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=QWEN_VOCAB, help="logits width (default: Qwen's)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile the run, print the top N")
    args = ap.parse_args()
    torch.set_num_threads(1)  # like the server's engine thread: one core of host work

    engine, times, wall, out_tokens = run_offline(args.vocab, args.profile)
    phases = [f.name for f in fields(StepTimes)]
    totals = [sum(getattr(t, p) for p in phases) for t in times]
    table = Table(
        title=f"engine host cost per step: {len(times):,} steps, {out_tokens:,} output tokens, "
        f"{wall:.1f} s wall, vocab {args.vocab:,} (stand-in runner: no model)"
    )
    for col in ("phase", "mean ms", "P50 ms", "P99 ms", "share"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    grand = sum(totals)
    notes = {"run": " (stand-in)", "complete": " (overlaps the GPU)", "sync": " (GPU: the wait)"}
    for name in phases:
        values = [getattr(t, name) for t in times]
        note = notes.get(name, "")
        table.add_row(name + note, *(f"{v:.3f}" for v in ms_stats(values)), f"{sum(values) / grand:.0%}")
    table.add_row("step total", *(f"{v:.3f}" for v in ms_stats(totals)), "100%", style="bold")
    console.print(table)

    prep = Table(title="ModelRunner host preparation (before the GPU can start the step)")
    for col in ("what", "mean ms", "P50 ms", "P99 ms"):
        prep.add_column(col, justify="left" if col == "what" else "right")
    for label, seconds in runner_prep(engine.runner):
        prep.add_row(label, *(f"{v:.3f}" for v in ms_stats(seconds)))
    console.print(prep)


if __name__ == "__main__":
    main()
