"""The Triton paged attention kernel (prefill, mixed and decode steps) against the PyTorch reference.

On the CPU the kernel runs in Triton's interpreter, which is chosen when triton is imported
(TRITON_INTERPRET=1), so that test re-runs this file as a script in a subprocess and the rest of
the session keeps compiled Triton. On CUDA it runs compiled with realistic shapes (skipped without
a GPU; `bench/README.md` says how to run it on the GPU machine).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from r1serve.model.attention import paged_attention, reference_paged_attention
from r1serve.model.triton_attention import TileConfig, paged_decode_attention, paged_varlen_attention

from bench.attention import Step, metadata, random_step

REPO = Path(__file__).resolve().parents[2]


def reference(step: Step) -> torch.Tensor:
    """float32 on the CPU, one sequence at a time (padding a long prompt's step to its length
    would need gigabytes)."""
    meta = step.meta
    cu = meta.cu_seqlens_q.tolist()
    start_pos = meta.start_pos.tolist()
    q, k_cache, v_cache = (x.float().cpu() for x in (step.q, step.k_cache, step.v_cache))
    out = []
    for i in range(len(start_pos)):
        one = metadata([start_pos[i]], [cu[i + 1] - cu[i]], meta.block_tables[i : i + 1], "cpu")
        out.append(reference_paged_attention(q[cu[i] : cu[i + 1]], k_cache, v_cache, one))
    return torch.cat(out)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape and torch.isfinite(got).all()
    return float((got.float().cpu() - want).norm() / want.norm())


def tolerance(dtype: torch.dtype) -> float:
    # 16-bit inputs: P is rounded to the input type before the P @ V product, as in flash-attention
    # (bf16 keeps 8 bits of mantissa, fp16 11: 2.6e-4 was measured for fp16 on an H200)
    return {torch.bfloat16: 1e-2, torch.float16: 1e-3}.get(dtype, 1e-5)


def patch_interpreter_bf16_dot() -> None:
    """The interpreter stores bfloat16 as uint16 and its `tl.dot` multiplies those bit patterns
    (triton-lang/triton#11584, "not supported yet"); compiled Triton multiplies the values in fp32
    accumulators. Convert bfloat16 operands to float32 first, exactly, as the proposed fix (#11585) does."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder

    dot = InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, *args, **kwargs):
        a, b = (self.cast_impl(x, tl.float32) if x.dtype.scalar == tl.bfloat16 else x for x in (a, b))
        return dot(self, a, b, d, *args, **kwargs)

    InterpreterBuilder.create_dot = create_dot


def run_interpreter_cases() -> list[str]:
    """Small steps through the kernel on CPU tensors; returns the failures (run with TRITON_INTERPRET=1)."""
    import triton

    failures = []
    # a fresh prompt, a decode of a cached sequence, a prefix-cached prompt chunk, and two chunks
    # whose first query sits just before a cache block boundary (16 and 64), where the blocks every
    # row sees whole end
    seqs = [(0, 20), (37, 1), (5, 33), (14, 9), (62, 3)]
    for heads, kv_heads, head_dim, dtype in [
        (4, 2, 16, torch.float32),
        (8, 2, 32, torch.bfloat16),
        (6, 2, 16, torch.float32),  # a GQA group (3) that is not a power of two
    ]:
        step = random_step(seqs, heads, kv_heads, head_dim, dtype, "cpu", seed=heads)
        want = reference(step)
        meta = step.meta
        # the tile the step would get (each sequence in one tile), then several tiles per sequence
        # with several unmasked and masked cache blocks each
        for tile in (None, TileConfig(block_q=16 // triton.next_power_of_2(heads // kv_heads), block_n=16)):
            got = paged_varlen_attention(
                step.q, step.k_cache, step.v_cache, meta.block_tables, meta.cu_seqlens_q,
                meta.start_pos, meta.max_query_len, tile,
            )  # fmt: skip
            rel = relative_error(got, want)
            if not rel < tolerance(dtype):
                failures.append(f"varlen {heads}/{kv_heads}x{head_dim} {dtype} {tile}: {rel:.2e}")
        # as a mixed-step CUDA graph launches it (cuda_graphs.MixedGraphs): tokens padded to a captured
        # size, empty sequences up to max_seqs, the launch shape of max_query_len = that size
        n, pad_seqs = step.q.shape[0], 3
        size = n + 13
        q = torch.cat([step.q, torch.randn(size - n, *step.q.shape[1:]).to(dtype)])
        cu = torch.cat([meta.cu_seqlens_q, torch.full((pad_seqs,), n, dtype=meta.cu_seqlens_q.dtype)])
        start = torch.cat([meta.start_pos, torch.zeros(pad_seqs, dtype=meta.start_pos.dtype)])
        tables = torch.cat([meta.block_tables, meta.block_tables[:pad_seqs]])  # rows no query reads
        got = paged_varlen_attention(q, step.k_cache, step.v_cache, tables, cu, start, size)[:n]
        rel = relative_error(got, want)
        if not rel < tolerance(dtype):
            failures.append(f"varlen padded like a graph {heads}/{kv_heads}x{head_dim} {dtype}: {rel:.2e}")
        # the decode form: one token per sequence, at the end of its context; its context in one
        # program, then split over 2 and 32 (flash-decoding: most splits of these short contexts
        # are empty)
        decode = random_step(
            [(0, 1), (15, 1), (16, 1), (70, 1), (200, 1)], heads, kv_heads, head_dim, dtype, "cpu"
        )
        want = reference(decode)
        for splits in (1, 2, 32):
            got = paged_decode_attention(
                decode.q, decode.k_cache, decode.v_cache, decode.meta.block_tables,
                decode.meta.context_lens, splits,
            )  # fmt: skip
            rel = relative_error(got, want)
            if not rel < tolerance(dtype):
                failures.append(f"decode {heads}/{kv_heads}x{head_dim} {dtype} {splits} splits: {rel:.2e}")
    return failures


# CI's stand-in for a GPU. Where one is present the compiled kernel is tested on the same cases below;
# and Triton 3.6's interpreter (the GPU machine's) cannot index a loop with a loaded value under NumPy 2.
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the compiled kernel (tests below)")
def test_kernel_matches_reference_in_the_triton_interpreter() -> None:
    pytest.importorskip("triton")
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # for `bench`
    env = os.environ | {"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "dtype"),
    [
        (12, 2, 128, torch.bfloat16),  # DeepSeek-R1-Distill-Qwen-1.5B
        (28, 4, 128, torch.bfloat16),  # 7B
        (6, 1, 128, torch.bfloat16),  # 1.5B's heads on one of two tensor-parallel ranks
        (32, 8, 128, torch.bfloat16),  # Llama-8B
        (8, 8, 64, torch.float16),  # no GQA
        (4, 2, 16, torch.float32),
        # float32 at the real tile (8 query tokens x 8 padded heads, 4 warps): exact enough to see one
        # mis-masked position
        (12, 2, 128, torch.float32),
    ],
)
def test_mixed_step_on_cuda_matches_reference(heads: int, kv_heads: int, head_dim: int, dtype) -> None:
    rng = random.Random(heads * 1000 + head_dim)
    decodes = [(rng.randint(0, 1999), 1) for _ in range(20)]
    prompts = [
        (0, 1500),  # fresh prompt
        (0, 3),
        (512, 700),  # prefix-cached prompt
        (37, 1000),
        (1000, 1000),  # a later chunk of a long prompt: context 2000
        (16, 17),
    ]
    seqs = decodes[:10] + prompts + decodes[10:]
    step = random_step(seqs, heads, kv_heads, head_dim, dtype, "cuda", seed=rng.randrange(2**31))
    got = paged_attention(step.q, step.k_cache, step.v_cache, step.meta)  # routed to the varlen kernel
    assert got.dtype == dtype
    rel = relative_error(got, reference(step))
    assert rel < tolerance(dtype), f"relative error {rel:.2e}"


def test_decode_splits_fill_the_gpu_and_stop_once_the_sequences_do() -> None:
    from r1serve.model.triton_attention import MAX_SPLITS, decode_splits

    # 132 SMs (H200), 2 KV heads (the 1.5B shape): two programs per SM, a power of two, at most 32
    assert [decode_splits(b, 2, 132) for b in (1, 8, 16, 32, 64, 66, 256)] == [32, 32, 16, 8, 4, 1, 1]
    assert all(decode_splits(b, kv, sms) <= MAX_SPLITS for b in (1, 3) for kv in (1, 8) for sms in (1, 200))


if __name__ == "__main__":  # the interpreter test's subprocess
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    torch.set_num_threads(1)
    patch_interpreter_bf16_dot()
    problems = run_interpreter_cases()
    print("\n".join(problems) or "all cases match the reference")
    sys.exit(1 if problems else 0)
