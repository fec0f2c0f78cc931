"""The decode-step Triton kernels against their PyTorch references: the skinny GEMV (`triton_gemv`),
`add_rms_norm` and `rope_store_kv` (`triton_fused`).

The first test runs every kernel in Triton's CPU interpreter, which CI can do. TRITON_INTERPRET=1 must
be set before triton is imported, so those checks run in a subprocess: this file run as a script.
The interpreter rounds float32 to bfloat16 toward zero and cannot run a bfloat16 `tl.dot`, so there
bfloat16 goes through the FMA variant with a one-ulp bound; the CUDA tests (skipped without a GPU)
check round-to-nearest, the tensor-core variants and every config the tuner may pick, on the real
shapes.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from r1serve.checkpoint import RopeConfig
from r1serve.model import triton_fused, triton_gemv
from r1serve.model.attention import store_kv
from r1serve.model.layers import RMSNorm
from r1serve.model.rotary import RotaryEmbedding, inverse_frequencies
from r1serve.model.triton_gemv import GemvConfig, gemv

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


def gemv_error(
    out: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    rounding: float,
) -> float:
    """max |out - exact| / allowed: 1 or less when `out` is the exact product rounded once (twice
    with a residual: the matmul, then the sum), each rounding off by at most `rounding` ulp, after an
    fp32 accumulation whose order may differ from any other's."""
    exact = x.double() @ w.double().T
    if bias is not None:
        exact = exact + bias.double()
    slack = 1e-5 * (x.double().abs() @ w.double().abs().T)
    allowed = rounding * ulp(out, x.dtype) + slack
    if residual is not None:
        allowed = allowed + rounding * ulp(exact.abs() + slack, x.dtype)
        exact = exact + residual.double()
    return float(((out.double() - exact).abs() / allowed).max())


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

    small = [GemvConfig(16, 64, 1, dot=True), GemvConfig(16, 64, 3, dot=True)]
    small_fma = [GemvConfig(16, 64, 1, dot=False), GemvConfig(32, 32, 4, dot=False)]
    cases = [(torch.float32, small + small_fma), (torch.float16, small + small_fma)]
    cases.append((torch.bfloat16, small_fma))  # the interpreter cannot tl.dot bfloat16
    for dtype, configs in cases:
        rounding = 1.0 if dtype == torch.bfloat16 else 0.5  # bf16: truncated in the interpreter
        for i, cfg in enumerate(configs):
            for m in (1, 3, 16) if cfg.dot else (1,):
                # N = 37 is no multiple of BLOCK_N; K = 200 no multiple of BLOCK_K
                n, k = 37, (200, 256)[(i + m) % 2]
                x, w = randn(m, k, dtype=dtype), randn(n, k, dtype=dtype)
                for bias in (None, randn(n, dtype=dtype)):
                    for residual in (None, randn(m, n, dtype=dtype)):
                        out = gemv(x, w, bias, residual, config=cfg)
                        extras = f"bias={bias is not None} residual={residual is not None}"
                        name = f"gemv {dtype} {cfg} M={m} K={k} {extras}"
                        check(name, gemv_error(out, x, w, bias, residual, rounding))
                if cfg.split_k > 1:
                    again = gemv(x, w, config=cfg)
                    if not torch.equal(again, gemv(x, w, config=cfg)):
                        failures.append(f"gemv {cfg}: split-K result differs between calls")
    locks = triton_gemv._buffers[torch.device("cpu")].locks
    if locks.any():
        failures.append("split-K counters not reset to zero")
    x, w = randn(1, 300, dtype=torch.float32), randn(70, 300, dtype=torch.float32)
    check("gemv default config", gemv_error(gemv(x, w), x, w, None, None, 0.5))

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
    """The paths the interpreter never takes (tensor-core dot, pipelined loads, split-K atomics) still
    have to compile for the GPU, within its 227 KiB of shared memory a block."""
    for dtype, (bn, bk, warps, stages, dot), even_k in [
        *(("bf16", tile, even) for tile in triton_gemv._TILES for even in (True, False)),
        ("fp32", triton_gemv._TILES[0], True),
    ]:
        pointers = {name: f"*{dtype}" for name in ("x_ptr", "w_ptr", "b_ptr", "r_ptr", "out_ptr")}
        pointers |= {"part_ptr": "*fp32", "lock_ptr": "*i32"}
        constexprs = dict(
            BLOCK_M=16 if dot else 1,
            BLOCK_N=bn,
            BLOCK_K=bk,
            DOT=dot,
            EVEN_K=even_k,
            DOT_PRECISION="ieee" if dtype == "fp32" else "tf32",
        )
        kernel = compile_for_h100(
            triton_gemv._gemv_kernel, pointers, constexprs, num_warps=warps, num_stages=stages
        )
        assert kernel.metadata.shared <= 227 * 1024, (dtype, bn, bk, stages)
    for dtype in ("bf16", "fp32"):
        pointers = {name: f"*{dtype}" for name in ("x_ptr", "r_ptr", "w_ptr", "out_ptr")}
        compile_for_h100(triton_fused._rms_norm_kernel, pointers, dict(BLOCK=2048, ADD_RESIDUAL=True))
        pointers = {"qkv_ptr": f"*{dtype}", "k_cache_ptr": f"*{dtype}", "v_cache_ptr": f"*{dtype}"}
        pointers |= {"pos_ptr": "*i64", "inv_freq_ptr": "*fp32", "slot_ptr": "*i64"}
        compile_for_h100(triton_fused._rope_store_kv_kernel, pointers, dict(HALF=64))


# ------------------------------------------------------------------------------------------------
# CUDA

# (name, N, K, bias, residual): the decoder's matmuls and the LM head of both shapes
SHAPES = [
    ("1.5b qkv_proj", 2048, 1536, True, False),
    ("1.5b o_proj", 1536, 1536, False, True),
    ("1.5b gate_up_proj", 17920, 1536, False, False),
    ("1.5b down_proj", 1536, 8960, False, True),
    ("1.5b lm_head", 151936, 1536, False, False),
    ("7b qkv_proj", 4608, 3584, True, False),
    ("7b o_proj", 3584, 3584, False, True),
    ("7b gate_up_proj", 37888, 3584, False, False),
    ("7b down_proj", 3584, 18944, False, True),
    ("7b lm_head", 152064, 3584, False, False),
]


def _operands(n: int, k: int, m: int, bias: bool, residual: bool, dtype: torch.dtype, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device="cuda", generator=gen) * scale).to(dtype)

    return (
        randn(m, k),
        randn(n, k, scale=0.02),
        randn(n, scale=0.1) if bias else None,
        randn(m, n) if residual else None,
    )


@needs_cuda
@pytest.mark.parametrize("m", [1, 4, 16])
@pytest.mark.parametrize(("name", "n", "k", "bias", "residual"), SHAPES, ids=[s[0] for s in SHAPES])
def test_every_candidate_config_rounds_the_exact_product_once(name, n, k, bias, residual, m) -> None:
    x, w, b, r = _operands(n, k, m, bias, residual, torch.bfloat16, seed=random.randrange(2**31))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    configs = triton_gemv.candidates(m, n, k, sms)
    errors = {str(cfg): gemv_error(gemv(x, w, b, r, config=cfg), x, w, b, r, 0.5) for cfg in configs}
    errors["tuned"] = gemv_error(gemv(x, w, b, r), x, w, b, r, 0.5)
    bad = {cfg: e for cfg, e in errors.items() if not e <= 1}
    assert not bad, f"{name} M={m}: errors beyond one rounding: {bad}"
    # Not asserted of cuBLAS: with torch's default allow_bf16_reduced_precision_reduction it may
    # reduce split-K partials in bf16, so it need not meet this bound.


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("m", [1, 5, 16])
def test_other_dtypes(dtype: torch.dtype, m: int) -> None:
    x, w, b, r = _operands(1000, 1536, m, True, True, dtype, seed=m)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for cfg in [*triton_gemv.candidates(m, 1000, 1536, sms), None]:
        assert gemv_error(gemv(x, w, b, r, config=cfg), x, w, b, r, 0.5) <= 1, cfg


@needs_cuda
@pytest.mark.parametrize("m", [1, 16])
def test_split_k_replays_from_a_cuda_graph_deterministically(m: int) -> None:
    """Split-K's counters must be back at zero after every launch, or the next replay's last program
    would never reduce; and the reduction order is fixed, so every replay gives the same bits."""
    dot = m > 1
    configs = [GemvConfig(32, 256, 6, dot=dot), GemvConfig(16, 128, 12, num_warps=4, dot=dot)]
    x, w, _, r = _operands(1536, 1536, m, False, True, torch.bfloat16, seed=1)
    for cfg in configs:
        expected = gemv(x, w, residual=r, config=cfg)
        static_x = x.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = torch.stack([gemv(static_x, w, residual=r, config=cfg) for _ in range(20)])
        for i in range(30):
            static_x.copy_(x if i % 2 == 0 else -x)
            graph.replay()
            want = expected if i % 2 == 0 else gemv(-x, w, residual=r, config=cfg)
            assert torch.equal(out, want.expand_as(out)), f"{cfg}: replay {i} differs"
        assert not triton_gemv._buffers[x.device].locks.any()


@needs_cuda
def test_tuning_runs_before_capture_and_never_under_it() -> None:
    """Timing or a first launch (which loads the kernel's module) would break a capture: a shape
    first seen under capture goes to cuBLAS, and keeps the config it was captured with."""
    x, w, _, r = _operands(1234, 640, 2, False, True, torch.bfloat16, seed=2)
    eager = gemv(x, w, residual=r)
    key = triton_gemv.tune_key(x, w)
    assert key in triton_gemv.timings and len(triton_gemv.timings[key]) > 1
    small, small_r = x[:1].clone(), r[:1].clone()  # a rows bucket not timed yet
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gemv(small, w, residual=small_r)
    graph.replay()
    assert triton_gemv.tune_key(small, w) not in triton_gemv.timings
    want = small_r + torch.nn.functional.linear(small, w)
    torch.testing.assert_close(out, want, rtol=1e-2, atol=1e-2)
    assert gemv_error(eager, x, w, None, r, 0.5) <= 1


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
