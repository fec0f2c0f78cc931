"""The GPU fast path against the plain PyTorch reference: the Triton decode kernel and CUDA graphs.

These run only where CUDA is available (the GPU machine: `bench/README.md` says how); on the CPU
they are skipped, and the reference path they compare against is covered by the parity tests.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from r1serve.model.attention import AttentionMetadata, paged_attention
from r1serve.model.triton_attention import paged_decode_attention
from r1serve.model_runner import ModelRunner, ScheduledSeq
from r1serve.packed_step import PackedStep, TokenFeed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _reference(q, k_cache, v_cache, tables, lens) -> torch.Tensor:
    """The plain PyTorch path, float32 on the CPU (it is never routed to the kernel there)."""
    meta = AttentionMetadata(
        slot_mapping=torch.empty(0, dtype=torch.int64),
        cu_seqlens_q=torch.arange(len(lens) + 1, dtype=torch.int32),
        start_pos=lens.cpu() - 1,
        context_lens=lens.cpu(),
        block_tables=tables.cpu(),
        max_query_len=1,
        max_context_len=int(lens.max()),
    )
    return paged_attention(q.float().cpu(), k_cache.float().cpu(), v_cache.float().cpu(), meta)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "dtype"),
    [(12, 2, 128, torch.bfloat16), (28, 4, 128, torch.bfloat16), (4, 2, 16, torch.float32)],
)
@pytest.mark.parametrize("splits", [0, 1, 4])  # 0: as picked for this batch on this card (32 on an H200)
def test_triton_decode_attention_matches_reference(heads, kv_heads, head_dim, dtype, splits) -> None:
    page, num_blocks = 16, 300
    lens = torch.tensor([1, 17, 64, 300, 1000], device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(random.randrange(2**31))
    k_cache = torch.randn(num_blocks, page, kv_heads, head_dim, device="cuda", dtype=dtype, generator=gen)
    v_cache = torch.randn(num_blocks, page, kv_heads, head_dim, device="cuda", dtype=dtype, generator=gen)
    q = torch.randn(len(lens), heads, head_dim, device="cuda", dtype=dtype, generator=gen)
    # each sequence gets its own shuffled, non-contiguous blocks
    order = torch.randperm(num_blocks, device="cuda", generator=gen).to(torch.int32)
    width = -(-int(lens.max()) // page)
    tables = torch.zeros(len(lens), width, dtype=torch.int32, device="cuda")
    used = 0
    for i, n in enumerate(lens.tolist()):
        blocks = -(-n // page)
        tables[i, :blocks] = order[used : used + blocks]
        used += blocks

    out = paged_decode_attention(q, k_cache, v_cache, tables, lens, splits)
    ref = _reference(q, k_cache, v_cache, tables, lens)
    assert torch.isfinite(out).all()
    rel = (out.float().cpu() - ref).norm() / ref.norm()
    assert rel < (1e-2 if dtype == torch.bfloat16 else 1e-5), f"relative error {rel:.2e}"


def _greedy(
    runner: ModelRunner, prompts: list[list[int]], steps: int
) -> tuple[list[list[int]], torch.Tensor]:
    """Prefill each prompt, then decode all of them together `steps` times; returns tokens and the
    last step's logits."""
    per_seq = -(-(max(map(len, prompts)) + steps) // runner.block_size)
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(len(prompts))]
    tokens = [
        [int(runner.run([ScheduledSeq(p, 0, t)]).argmax())] for p, t in zip(prompts, tables, strict=True)
    ]
    logits = torch.empty(0)
    for _ in range(steps):
        batch = [
            ScheduledSeq([out[-1]], len(p) + len(out) - 1, t)
            for p, out, t in zip(prompts, tokens, tables, strict=True)
        ]
        logits = runner.run(batch).cpu()
        for out, tok in zip(tokens, logits.argmax(-1).tolist(), strict=True):
            out.append(tok)
    return tokens, logits


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_cuda_graph_decode_matches_eager(tiny_model_dir: Path, batch: int) -> None:
    rng = random.Random(batch)
    prompts = [[rng.randrange(1, 1700) for _ in range(rng.randint(3, 40))] for _ in range(batch)]
    common = dict(
        device="cuda", dtype="float32", kv_cache_memory=64 * 2**20, max_model_len=512, progress=False
    )
    graphs = ModelRunner(tiny_model_dir, max_num_seqs=8, **common)
    eager = ModelRunner(tiny_model_dir, enforce_eager=True, **common)
    assert graphs.graphs is not None and eager.graphs is None
    tokens_g, logits_g = _greedy(graphs, prompts, steps=24)
    tokens_e, logits_e = _greedy(eager, prompts, steps=24)
    assert tokens_g == tokens_e
    assert torch.allclose(logits_g, logits_e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_kernels_match_the_pytorch_path(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """RMSNorm, rotary and SiLU-and-mul as one Triton kernel each, against the PyTorch code they replace."""
    from r1serve.checkpoint import RopeConfig
    from r1serve.model import triton_fused
    from r1serve.model.layers import RMSNorm, SwiGLU
    from r1serve.model.rotary import RotaryEmbedding

    torch.manual_seed(random.randrange(2**31))
    norm = RMSNorm(1536, 1e-6).to("cuda", dtype)
    mlp = SwiGLU(256, 1000).to("cuda", dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        for weight in mlp.parameters():  # left uninitialised for the loader to fill
            weight.uniform_(-1 / 16, 1 / 16)
    rotary = RotaryEmbedding(128, RopeConfig(theta=10000.0))
    x = torch.randn(37, 1536, device="cuda", dtype=dtype)
    h = torch.randn(37, 256, device="cuda", dtype=dtype)
    q = torch.randn(37, 12, 128, device="cuda", dtype=dtype)
    k = torch.randn(37, 2, 128, device="cuda", dtype=dtype)
    positions = torch.randint(0, 100_000, (37,), device="cuda")

    with torch.no_grad():
        fused = (norm(x), mlp(h), *rotary(positions, q.clone(), k.clone()))
        monkeypatch.setattr(triton_fused, "supports", lambda _: False)
        reference = (norm(x), mlp(h), *rotary(positions, q.clone(), k.clone()))
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5
    for name, got, want in zip(("rms_norm", "silu_mul", "rope q", "rope k"), fused, reference, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        rel = (got.float() - want.float()).norm() / want.float().norm()
        assert rel < tolerance, f"{name}: relative error {rel:.2e}"


def test_mixed_step_graphs_match_eager(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps with prompt chunks through the captured mixed-step graphs (cuda_graphs.MixedGraphs), one
    above the largest (eager there too), and decode steps, against a runner that never captures."""
    from r1serve.cuda_graphs import MixedGraphs

    common = dict(
        device="cuda", dtype="float32", kv_cache_memory=256 * 2**20, max_model_len=2048, progress=False
    )
    graphs = ModelRunner(tiny_model_dir, max_num_seqs=8, **common)
    eager = ModelRunner(tiny_model_dir, enforce_eager=True, **common)
    assert graphs.mixed_graphs is not None and eager.mixed_graphs is None
    replayed = []
    run = MixedGraphs.run

    def counted(self: MixedGraphs, step: PackedStep, feed: TokenFeed | None = None) -> torch.Tensor:
        replayed.append(step.num_tokens)
        return run(self, step, feed)

    monkeypatch.setattr(MixedGraphs, "run", counted)

    rng = random.Random(7)
    per_seq = 2048 // graphs.block_size
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(6)]
    seqs = [[rng.randrange(1, 1700) for _ in range(n)] for n in (37, 5, 100, 300, 1100, 2)]
    done = [0] * 6  # tokens of each sequence in the cache

    def step(chunks: dict[int, int]) -> None:
        """chunks: sequence -> tokens to compute this step; a finished prompt grows by one token."""
        batch = []
        for i, n in chunks.items():
            if done[i] == len(seqs[i]):
                seqs[i].append(rng.randrange(1, 1700))
            batch.append(ScheduledSeq(seqs[i][done[i] : done[i] + n], done[i], tables[i]))
            done[i] += n
        got, want = graphs.run(batch).cpu(), eager.run(batch).cpu()
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()

    step({0: 37, 1: 5, 2: 60})  # three fresh prompts, one of them chunked
    step({0: 1, 1: 1, 2: 40, 3: 300})  # decodes beside the chunk's rest (start_pos 60) and a new prompt
    step({0: 1, 1: 1, 2: 1, 3: 1, 4: 1100})  # 1,104 tokens: above the largest graph, eager
    step({0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 2})  # six sequences, a 2-token prompt
    step({i: 1 for i in range(6)})  # decode only: the decode graphs
    assert replayed == [102, 342, 7]
