"""The decode-step Triton kernels against their PyTorch references: `add_rms_norm`, `rms_norm`,
`rope_store_kv` and `rope_` (`triton_fused`).

The first test runs every kernel in Triton's CPU interpreter, which CI can do. TRITON_INTERPRET=1 must
be set before triton is imported, so those checks run in a subprocess: this file run as a script.
The interpreter rounds float32 to bfloat16 toward zero, so there bfloat16 gets looser bounds; the
CUDA tests (skipped without a GPU) check round-to-nearest on the real shapes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from r1serve.checkpoint import RopeConfig
from r1serve.model import triton_fused
from r1serve.model.attention import store_kv
from r1serve.model.layers import RMSNorm
from r1serve.model.rotary import RotaryEmbedding, inverse_frequencies

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
LLAMA3 = RopeConfig(
    theta=500000.0,
    kind="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,
)


def ulp(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` numbers at |v| (float64)."""
    _, exponent = torch.frexp(v.double())
    return torch.ldexp(torch.full_like(v, torch.finfo(dtype).eps, dtype=torch.float64), exponent - 1)


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


def rope_reference(
    qkv: torch.Tensor, positions: torch.Tensor, rope: RopeConfig, heads: int, kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k rotated by the PyTorch path of `RotaryEmbedding` (CPU: the reference), and v."""
    q, k, v = qkv.cpu().split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k = RotaryEmbedding(head_dim, rope)(
        positions.cpu(), q.unflatten(1, (heads, head_dim)), k.unflatten(1, (kv_heads, head_dim))
    )
    return q, k, v.unflatten(1, (kv_heads, head_dim))


# ------------------------------------------------------------------------------------------------
# The Triton interpreter, on the CPU


def interpreter_checks() -> list[str]:
    """Every kernel on small, awkward shapes; returns the failures."""
    failures = []

    def check(name: str, error: float) -> None:
        print(f"{name}: {error:.3f}")
        if not error <= 1:
            failures.append(f"{name}: error {error:.3f} of the allowed")

    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    for dtype in (torch.float32, torch.bfloat16):
        # relative to the reference's norm, as the GPU tests of the existing kernels measure; twice
        # theirs for bf16, as the interpreter truncates each of rotary's roundings
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        norm = RMSNorm(100, 1e-6).to(dtype)  # n = 100: no power of two
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5, generator=gen)
        x, residual = randn(3, 100, dtype=dtype), randn(3, 100, dtype=dtype)
        want_residual, exact = residual + x, residual.double() + x.double()
        with torch.no_grad():
            want = norm(want_residual)
        normed, new_residual = triton_fused.add_rms_norm(x, residual, norm.weight, norm.eps)
        if new_residual.data_ptr() != residual.data_ptr():
            failures.append("add_rms_norm did not update the residual in place")
        # one rounding of the exact sum: within an ulp even when truncated
        err = (new_residual.double() - exact).abs() / ulp(exact, dtype)
        check(f"add_rms_norm residual {dtype}", float(err.max()))
        check(f"add_rms_norm normed {dtype}", rel_error(normed, want) / tol)
        plain = triton_fused.rms_norm(want_residual, norm.weight, norm.eps)
        check(f"rms_norm {dtype}", rel_error(plain, want) / tol)

        heads, kv_heads, head_dim, tokens, block_size = 4, 2, 16, 5, 4
        for rope in (RopeConfig(theta=10000.0), LLAMA3):
            width = (heads + 2 * kv_heads) * head_dim
            qkv = randn(tokens, width + 8, dtype=dtype)[:, :width]  # rows strided past their width
            original = qkv.clone()
            positions = torch.randint(0, 5000, (tokens,), generator=gen)
            slots = torch.randperm(6 * block_size, generator=gen)[:tokens]
            k_cache = randn(6, block_size, kv_heads, head_dim, dtype=dtype)
            v_cache = randn(6, block_size, kv_heads, head_dim, dtype=dtype)
            want_q, want_k, v = rope_reference(qkv, positions, rope, heads, kv_heads, head_dim)
            want_k_cache, want_v_cache = k_cache.clone(), v_cache.clone()
            store_kv(want_k, v, want_k_cache, want_v_cache, slots)
            inv_freq = inverse_frequencies(head_dim, rope)
            q = triton_fused.rope_store_kv(
                qkv, positions, inv_freq, k_cache, v_cache, slots, heads, kv_heads, head_dim
            )
            if q.shape != (tokens, heads, head_dim) or q.data_ptr() != qkv.data_ptr():
                failures.append("rope_store_kv: q is not a [tokens, heads, head_dim] view of qkv")
            if not torch.equal(v_cache, want_v_cache):
                failures.append(f"rope_store_kv {rope.kind} {dtype}: v cache differs")
            check(f"rope_store_kv {rope.kind} q {dtype}", rel_error(q, want_q) / tol)
            check(f"rope_store_kv {rope.kind} k cache {dtype}", rel_error(k_cache, want_k_cache) / tol)
            # the rotary module's own kernel, which shares the rotation code
            q2 = original[:, : heads * head_dim].unflatten(1, (heads, head_dim))
            k2 = original[:, heads * head_dim : (heads + kv_heads) * head_dim].unflatten(1, (kv_heads, -1))
            triton_fused.rope_(q2, k2, positions, inv_freq)
            check(f"rope_ {rope.kind} q {dtype}", rel_error(q2, want_q) / tol)
            check(f"rope_ {rope.kind} k {dtype}", rel_error(k2, want_k) / tol)
    return failures


def test_kernels_match_the_reference_in_the_triton_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]


def compile_for_h100(fn, pointers: dict[str, str], constexprs: dict, **options):
    """Compiles a kernel for sm_90 without a GPU: `pointers` gives each pointer argument's element type,
    every other runtime argument is an i32 (a float if named eps), all 16-aligned like real tensors."""
    import triton
    from triton.backends.compiler import GPUTarget

    signature = {
        name: "constexpr" if name in constexprs else pointers.get(name, "fp32" if name == "eps" else "i32")
        for name in fn.arg_names
    }
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(signature) if name.endswith("_ptr")}
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA tests compile and run them there")
def test_kernels_compile_for_h100() -> None:
    """The interpreter runs the kernels without compiling them: they still have to compile for sm_90."""
    for dtype in ("bf16", "fp32"):
        pointers = {name: f"*{dtype}" for name in ("x_ptr", "r_ptr", "w_ptr", "out_ptr")}
        compile_for_h100(triton_fused._rms_norm_kernel, pointers, dict(BLOCK=2048, ADD_RESIDUAL=True))
        pointers = {"qkv_ptr": f"*{dtype}", "k_cache_ptr": f"*{dtype}", "v_cache_ptr": f"*{dtype}"}
        pointers |= {"pos_ptr": "*i64", "inv_freq_ptr": "*fp32", "slot_ptr": "*i64"}
        compile_for_h100(triton_fused._rope_store_kv_kernel, pointers, dict(HALF=64))


# ------------------------------------------------------------------------------------------------
# CUDA


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("rows", "hidden"), [(1, 1536), (16, 1536), (7, 3584)])
def test_add_rms_norm_matches_the_pytorch_path(dtype: torch.dtype, rows: int, hidden: int) -> None:
    torch.manual_seed(rows)
    norm = RMSNorm(hidden, 1e-6).to("cuda", dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(rows, hidden, device="cuda", dtype=dtype)
    residual = torch.randn(rows, hidden, device="cuda", dtype=dtype)
    want_residual = residual + x  # what the decoder's `x + self.self_attn(...)` gives
    normed, new_residual = triton_fused.add_rms_norm(x, residual, norm.weight, norm.eps)
    assert new_residual.data_ptr() == residual.data_ptr()
    assert torch.equal(new_residual, want_residual)
    assert torch.equal(normed, triton_fused.rms_norm(want_residual, norm.weight, norm.eps))
    with torch.no_grad():
        want = torch.nn.functional.rms_norm(want_residual.float(), (hidden,), eps=norm.eps)
        want = norm.weight * want.to(dtype)  # the PyTorch path of RMSNorm, as transformers rounds
    err = (normed.double() - want.double()).abs() / ulp(want, dtype)
    assert err.max() <= (2 if dtype == torch.bfloat16 else 64), float(err.max())


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("heads", "kv_heads", "tokens"), [(12, 2, 1), (12, 2, 37), (28, 4, 16)])
@pytest.mark.parametrize("rope", [RopeConfig(theta=10000.0), LLAMA3], ids=["default", "llama3"])
def test_rope_store_kv_matches_rotary_plus_store_kv(dtype, heads, kv_heads, tokens, rope) -> None:
    """What the unfused path on the GPU gives (the rotary kernel, then `store_kv`), bit for bit in bf16; and
    the decode attention reads the returned q view like a contiguous q."""
    from r1serve.model.triton_attention import paged_decode_attention

    head_dim, block_size, blocks = 128, 16, 64
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    width = (heads + 2 * kv_heads) * head_dim
    qkv = torch.randn(tokens, width, device="cuda", generator=gen).to(dtype)
    original = qkv.clone()
    positions = torch.randint(0, 100_000, (tokens,), device="cuda", generator=gen)
    slots = torch.randperm(blocks * block_size, device="cuda", generator=gen)[:tokens]
    cache = torch.randn(2, blocks, block_size, kv_heads, head_dim, device="cuda", generator=gen).to(dtype)

    rotary = RotaryEmbedding(head_dim, rope)
    sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    q_ref, k_ref, v_ref = original.clone().split(sizes, -1)
    q_ref, k_ref = rotary(
        positions, q_ref.unflatten(1, (heads, head_dim)), k_ref.unflatten(1, (kv_heads, -1))
    )
    cache_ref = cache.clone()
    store_kv(k_ref, v_ref.unflatten(1, (kv_heads, head_dim)), cache_ref[0], cache_ref[1], slots)

    inv_freq = inverse_frequencies(head_dim, rope).cuda()
    q = triton_fused.rope_store_kv(
        qkv, positions, inv_freq, cache[0], cache[1], slots, heads, kv_heads, head_dim
    )
    if dtype == torch.bfloat16:  # every product and sum is rounded to bf16: no room for FMA contraction
        assert torch.equal(q, q_ref)
        assert torch.equal(cache, cache_ref)
    else:
        torch.testing.assert_close(q, q_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(cache, cache_ref, rtol=1e-6, atol=1e-6)

    q_cpu, _, _ = rope_reference(original, positions, rope, heads, kv_heads, head_dim)  # the PyTorch path
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert (q.cpu().float() - q_cpu.float()).norm() / q_cpu.float().norm() < tolerance

    tables = torch.arange(blocks, device="cuda", dtype=torch.int32).repeat(tokens, 1)
    lens = torch.randint(1, blocks * block_size, (tokens,), device="cuda", generator=gen)
    out = paged_decode_attention(q, cache[0], cache[1], tables, lens)
    assert torch.equal(out, paged_decode_attention(q.contiguous(), cache[0], cache[1], tables, lens))


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("run with TRITON_INTERPRET=1 (the interpreter test does)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    torch.set_num_threads(1)
    problems = interpreter_checks()
    print("\n".join(problems) or "all kernels match")
    sys.exit(1 if problems else 0)
