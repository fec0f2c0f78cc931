"""Fused Triton kernels for the decoder's elementwise work on the GPU: RMSNorm (optionally after the
residual add), rotary (optionally with the KV-cache store), SiLU-and-mul.

Written in plain PyTorch each of these is five to ten kernels (upcast, square, mean, rsqrt, cast,
multiply...), so a batch-1 decode step of a 28-layer model launches over a thousand tiny kernels and
spends more time on them than on reading the weights. Each kernel here is one launch and rounds
where the PyTorch (= transformers) code rounds, so bf16 results match the reference path to the
last bit or one ulp; the GPU tests compare them. The CPU keeps the PyTorch code.
"""

from __future__ import annotations

import torch

from r1serve.model.kernel_compile import launch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None


def supports(x: torch.Tensor) -> bool:
    return triton is not None and x.is_cuda


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, r_ptr, w_ptr, out_ptr, stride_x, stride_r, stride_o, n, eps,
        BLOCK: tl.constexpr, ADD_RESIDUAL: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if ADD_RESIDUAL:
            # transformers' `hidden = residual + hidden`, rounded to the dtype, is the new residual
            r = tl.load(r_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
            x = (r + x).to(r_ptr.dtype.element_ty)
            tl.store(r_ptr + row * stride_r + cols, x, mask=mask)
            x = x.to(tl.float32)
        normed = x * tl.rsqrt(tl.sum(x * x, 0) / n + eps)
        # transformers: normalise in float32, cast back to the input dtype, then multiply the weight
        normed = normed.to(x_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_o + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rotate(src, dst, angle, HALF: tl.constexpr):
        """Rotates the head at `src` (half-split layout) by `angle` [HALF] and writes it to `dst`."""
        dtype = dst.dtype.element_ty
        # cos/sin in float32, cast to the activations' dtype; each product and sum rounded like
        # `x * cos + rotate_half(x) * sin` in that dtype
        cos = tl.cos(angle).to(dtype).to(tl.float32)
        sin = tl.sin(angle).to(dtype).to(tl.float32)
        i = tl.arange(0, HALF)
        x1 = tl.load(src + i).to(tl.float32)
        x2 = tl.load(src + HALF + i).to(tl.float32)
        o1 = (x1 * cos).to(dtype).to(tl.float32) + (-x2 * sin).to(dtype).to(tl.float32)
        o2 = (x2 * cos).to(dtype).to(tl.float32) + (x1 * sin).to(dtype).to(tl.float32)
        tl.store(dst + i, o1.to(dtype))
        tl.store(dst + HALF + i, o2.to(dtype))

    @triton.jit
    def _angle(pos_ptr, inv_freq_ptr, token, HALF: tl.constexpr):
        # float32 angles, as transformers computes them
        return tl.load(pos_ptr + token).to(tl.float32) * tl.load(inv_freq_ptr + tl.arange(0, HALF))

    @triton.jit
    def _rope_kernel(
        q_ptr, k_ptr, pos_ptr, inv_freq_ptr, stride_qt, stride_qh, stride_kt, stride_kh, num_q_heads,
        HALF: tl.constexpr,
    ):  # fmt: skip
        token = tl.program_id(0)
        head = tl.program_id(1)
        if head < num_q_heads:
            base = q_ptr + token * stride_qt + head * stride_qh
        else:
            base = k_ptr + token * stride_kt + (head - num_q_heads) * stride_kh
        _rotate(base, base, _angle(pos_ptr, inv_freq_ptr, token, HALF), HALF)

    @triton.jit
    def _rope_store_kv_kernel(
        qkv_ptr, pos_ptr, inv_freq_ptr, slot_ptr, k_cache_ptr, v_cache_ptr,
        stride_t, stride_block, stride_slot, stride_head, block_size, num_heads, num_kv_heads,
        HALF: tl.constexpr,
    ):  # fmt: skip
        token = tl.program_id(0)
        head = tl.program_id(1)  # q heads, then KV heads: one program rotates k and copies v
        src = qkv_ptr + token * stride_t + head * (2 * HALF)
        angle = _angle(pos_ptr, inv_freq_ptr, token, HALF)
        if head < num_heads:
            _rotate(src, src, angle, HALF)
        else:
            slot = tl.load(slot_ptr + token).to(tl.int64)
            dst = (slot // block_size) * stride_block + (slot % block_size) * stride_slot
            dst += (head - num_heads) * stride_head
            _rotate(src, k_cache_ptr + dst, angle, HALF)
            d = tl.arange(0, 2 * HALF)
            v = tl.load(src + num_kv_heads * (2 * HALF) + d)
            tl.store(v_cache_ptr + dst + d, v.to(v_cache_ptr.dtype.element_ty))

    @triton.jit
    def _silu_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, n, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n
        gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + row * stride_x + n + cols, mask=mask, other=0.0).to(tl.float32)
        dtype = out_ptr.dtype.element_ty
        act = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
        tl.store(out_ptr + row * stride_o + cols, (act * up).to(dtype), mask=mask)


def _rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    n = x.shape[-1]
    r = x if residual is None else residual  # not read without a residual
    launch(
        _rms_norm_kernel, (x.shape[0],), x, r, weight, out, x.stride(0), r.stride(0), out.stride(0), n, eps,
        BLOCK=triton.next_power_of_2(n), ADD_RESIDUAL=residual is not None,
    )  # fmt: skip
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`weight * (x / rms(x)).to(x.dtype)` over the last dimension of a 2-D `x`."""
    return _rms_norm(x, None, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`residual += x` (rounded to the dtype, in place) then `rms_norm(residual)`, in one launch;
    returns (normed, residual). Both 2-D, same shape and dtype, contiguous rows."""
    same = residual.shape == x.shape and residual.dtype == x.dtype
    if not same or residual.stride(-1) != 1 or x.stride(-1) != 1:
        raise ValueError("add_rms_norm takes x and residual of one shape and dtype, with contiguous rows")
    return _rms_norm(x, residual, weight, eps), residual


def rope_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> None:
    """Rotates q `[tokens, heads, d]` and k `[tokens, kv_heads, d]` in place (half-split layout)."""
    tokens, heads, head_dim = q.shape
    grid = (tokens, heads + k.shape[1])
    launch(
        _rope_kernel,
        grid,
        q,
        k,
        positions,
        inv_freq,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        heads,
        HALF=head_dim // 2,
    )


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * up` for `x = [gate | up]` of shape `[tokens, 2 * n]`."""
    n = x.shape[-1] // 2
    out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    block = 1024
    grid = (x.shape[0], triton.cdiv(n, block))
    launch(_silu_mul_kernel, grid, x, out, x.stride(0), out.stride(0), n, BLOCK=block)
    return out


def rope_store_kv(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> torch.Tensor:
    """Rotary plus `attention.store_kv` for the packed projection `qkv` [tokens, (heads + 2 * kv_heads)
    * head_dim]: rotates q in place, writes the rotated k and the v rows into the cache slots
    `slot_mapping` [tokens] of `k_cache` / `v_cache` [blocks, block_size, kv_heads, head_dim]; one
    launch. Returns q as a view [tokens, heads, head_dim] of `qkv` (row stride qkv's). The k part of
    `qkv` is left unrotated: attention reads K from the cache."""
    tokens = qkv.shape[0]
    if qkv.shape[1] != (num_heads + 2 * num_kv_heads) * head_dim or qkv.stride(1) != 1:
        raise ValueError("qkv must be [tokens, (heads + 2 * kv_heads) * head_dim] with contiguous rows")
    if (
        k_cache.shape[2:] != (num_kv_heads, head_dim)
        or k_cache.stride() != v_cache.stride()
        or k_cache.stride(3) != 1
    ):
        raise ValueError("k_cache and v_cache must be [blocks, block_size, kv_heads, head_dim], alike")
    launch(
        _rope_store_kv_kernel, (tokens, num_heads + num_kv_heads),
        qkv, positions, inv_freq, slot_mapping, k_cache, v_cache,
        qkv.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.shape[1],
        num_heads, num_kv_heads, HALF=head_dim // 2,
    )  # fmt: skip
    return qkv[:, : num_heads * head_dim].unflatten(1, (num_heads, head_dim))
