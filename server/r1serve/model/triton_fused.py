"""Fused Triton kernels for the decoder's elementwise work on the GPU: RMSNorm, rotary, SiLU-and-mul.

Written in plain PyTorch each of these is five to ten kernels (upcast, square, mean, rsqrt, cast,
multiply...), so a batch-1 decode step of a 28-layer model launches over a thousand tiny kernels and
spends more time on them than on reading the weights. Each kernel here is one launch and rounds
where the PyTorch (= transformers) code rounds, so bf16 results match the reference path to the
last bit or one ulp; the GPU tests compare them. The CPU keeps the PyTorch code.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None


def supports(x: torch.Tensor) -> bool:
    return triton is not None and x.is_cuda


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, stride_x, stride_o, n, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        normed = x * tl.rsqrt(tl.sum(x * x, 0) / n + eps)
        # transformers: normalise in float32, cast back to the input dtype, then multiply the weight
        normed = normed.to(x_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_o + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_kernel(
        q_ptr, k_ptr, pos_ptr, inv_freq_ptr, stride_qt, stride_qh, stride_kt, stride_kh, num_q_heads,
        HALF: tl.constexpr,
    ):  # fmt: skip
        token = tl.program_id(0)
        head = tl.program_id(1)
        i = tl.arange(0, HALF)
        angle = tl.load(pos_ptr + token).to(tl.float32) * tl.load(inv_freq_ptr + i)
        if head < num_q_heads:
            base = q_ptr + token * stride_qt + head * stride_qh
        else:
            base = k_ptr + token * stride_kt + (head - num_q_heads) * stride_kh
        dtype = base.dtype.element_ty
        # cos/sin in float32, cast to the activations' dtype; each product and sum rounded like
        # `x * cos + rotate_half(x) * sin` in that dtype
        cos = tl.cos(angle).to(dtype).to(tl.float32)
        sin = tl.sin(angle).to(dtype).to(tl.float32)
        x1 = tl.load(base + i).to(tl.float32)
        x2 = tl.load(base + HALF + i).to(tl.float32)
        o1 = (x1 * cos).to(dtype).to(tl.float32) + (-x2 * sin).to(dtype).to(tl.float32)
        o2 = (x2 * cos).to(dtype).to(tl.float32) + (x1 * sin).to(dtype).to(tl.float32)
        tl.store(base + i, o1.to(dtype))
        tl.store(base + HALF + i, o2.to(dtype))

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


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`weight * (x / rms(x)).to(x.dtype)` over the last dimension of a 2-D `x`."""
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    n = x.shape[-1]
    _rms_norm_kernel[(x.shape[0],)](
        x, weight, out, x.stride(0), out.stride(0), n, eps, BLOCK=triton.next_power_of_2(n)
    )
    return out


def rope_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> None:
    """Rotates q `[tokens, heads, d]` and k `[tokens, kv_heads, d]` in place (half-split layout)."""
    tokens, heads, head_dim = q.shape
    grid = (tokens, heads + k.shape[1])
    _rope_kernel[grid](
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
    _silu_mul_kernel[(x.shape[0], triton.cdiv(n, block))](x, out, x.stride(0), out.stride(0), n, BLOCK=block)
    return out
