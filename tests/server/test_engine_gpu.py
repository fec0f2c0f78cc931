"""The engine on CUDA in bf16 (skipped without a GPU; CI has none). Ran on an H100: see the report in
docs/SERVER.md. Same properties as test_engine.py, where bf16 allows them to hold exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from r1serve.cuda_graphs import MIXED_GRAPH_TOKENS
from r1serve.engine.llm_engine import LLMEngine
from r1serve.engine.sequence import SamplingParams, Sequence
from r1serve.model_runner import ModelRunner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [[50 * k + 5 + i for i in range(n)] for k, n in enumerate((3, 10, 17, 9, 40, 100))]
P = SamplingParams
MIXED = [
    P(max_tokens=32, temperature=0.0, ignore_eos=True),
    P(max_tokens=32, temperature=0.8, top_p=0.9, seed=1, ignore_eos=True),
    P(max_tokens=32, temperature=1.0, top_k=5, seed=2, ignore_eos=True),
    P(max_tokens=32, temperature=0.7, presence_penalty=1.0, frequency_penalty=0.5, seed=3, ignore_eos=True),
    P(max_tokens=32, temperature=0.6, top_p=0.95, ignore_eos=True),
    P(max_tokens=32, temperature=0.0, frequency_penalty=2.0, ignore_eos=True),
]
GREEDY = P(max_tokens=40, temperature=0.0, ignore_eos=True)


def runner(model_dir: Path, **kw: int) -> ModelRunner:
    # A fixed cache: sized from free memory, it would depend on what earlier tests still hold (a runner
    # kept alive by a failed test's traceback left the next one 0 blocks)
    kw.setdefault("kv_cache_memory", 2**28)
    return ModelRunner(model_dir, device="cuda", progress=False, max_model_len=256, max_num_seqs=64, **kw)


def generate(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]) -> list[list[int]]:
    seqs = [Sequence(list(p), sp) for p, sp in zip(prompts, params, strict=True)]
    for s in seqs:
        engine.add(s)
    while engine.has_work():
        engine.step()
    return [s.output_token_ids for s in seqs]


def engine(r: ModelRunner, budget: int = 2048) -> LLMEngine:
    return LLMEngine(r, max_num_seqs=64, max_num_batched_tokens=budget)


def test_mixed_sampling_batch_and_seeds_on_cuda(tiny_model_dir: Path) -> None:
    r = runner(tiny_model_dir)
    assert r.dtype == torch.bfloat16
    batched = generate(engine(r), PROMPTS, MIXED)
    assert [len(x) for x in batched] == [32] * len(PROMPTS)
    for i in (1, 3):  # seeded (with and without penalties): the same alone as in the batch
        assert generate(engine(r), [PROMPTS[i]], [MIXED[i]]) == [batched[i]]


def test_batching_chunking_and_preemption_keep_greedy_outputs_on_cuda(tiny_model_dir: Path) -> None:
    r = runner(tiny_model_dir)
    alone = [generate(engine(r), [p], [GREEDY])[0] for p in PROMPTS]
    assert generate(engine(r), PROMPTS, [GREEDY] * len(PROMPTS)) == alone
    # a capped prompt chunk beside decodes fills the mixed-step graph it is padded to
    capped = LLMEngine(r, max_num_seqs=64, max_num_batched_tokens=2048, max_prefill_tokens_when_decoding=5)
    assert capped.scheduler.step_sizes == list(MIXED_GRAPH_TOKENS)
    assert generate(capped, PROMPTS, [GREEDY] * len(PROMPTS)) == alone
    small = runner(tiny_model_dir, kv_cache_memory=20 * r.block_bytes)
    e = engine(small, budget=16)
    assert generate(e, PROMPTS, [GREEDY] * len(PROMPTS)) == alone
    assert e.scheduler.num_preemptions > 0
    assert e.block_manager.num_free_blocks == e.block_manager.num_blocks


def test_async_scheduling_keeps_outputs_on_cuda(tiny_model_dir: Path) -> None:
    """Step n+1 launched from step n's tokens on the device (decode and mixed-step graphs fed by a
    TokenFeed), through batching, chunking, preemption and sampled rows: the same tokens as reading
    each step back at once."""
    r = runner(tiny_model_dir)
    # greedy and seeded (no penalties: they read the previous step back first)
    sampled = [MIXED[i] for i in (0, 1, 2, 0, 1, 2)]
    for budget, kv in ((2048, 2**28), (16, 20 * r.block_bytes)):
        rk = runner(tiny_model_dir, kv_cache_memory=kv)
        sync = generate(engine(rk, budget), PROMPTS, sampled)
        overlapped = LLMEngine(rk, max_num_seqs=64, max_num_batched_tokens=budget, async_scheduling=True)
        assert overlapped.async_scheduling
        assert generate(overlapped, PROMPTS, sampled) == sync
        assert overlapped.block_manager.num_free_blocks == overlapped.block_manager.num_blocks
