"""Decode attention over the paged KV cache as one Triton kernel (the GPU fast path).

A decode step has one query token per sequence. One program handles one (sequence, KV head) pair and
all the query heads that share that KV head (GQA), streaming the sequence's cached K/V through its
block table with an online softmax, so each K/V byte is read once. Loop bounds come from the
`context_lens` tensor, not from Python, so the kernel can be captured in a CUDA graph.

`attention.paged_attention` (plain PyTorch) stays the reference; the GPU tests compare against it.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the reference path is used
    triton = None


def supports(q: torch.Tensor) -> bool:
    """The kernel runs on CUDA tensors whose head_dim is a power of two (tl.arange needs one)."""
    head_dim = q.shape[-1]
    return triton is not None and q.is_cuda and head_dim >= 16 and head_dim & (head_dim - 1) == 0


if triton is not None:

    @triton.jit
    def _decode_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        out_ptr,
        block_tables_ptr,
        context_lens_ptr,
        scale,
        stride_q_tok,
        stride_q_head,
        stride_o_tok,
        stride_o_head,
        stride_bt,
        NUM_KV_HEADS: tl.constexpr,
        GROUP: tl.constexpr,
        GROUP_PAD: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        PAGE: tl.constexpr,
        BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
    ):
        seq = tl.program_id(0)
        kv_head = tl.program_id(1)
        context_len = tl.load(context_lens_ptr + seq)

        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, HEAD_DIM)
        heads = kv_head * GROUP + g
        q_mask = g[:, None] < GROUP
        q = tl.load(
            q_ptr + seq * stride_q_tok + heads[:, None] * stride_q_head + d[None, :], mask=q_mask, other=0.0
        )

        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        slot_stride = NUM_KV_HEADS * HEAD_DIM
        for start in range(0, context_len, BLOCK_N):
            t = start + tl.arange(0, BLOCK_N)
            valid = t < context_len
            page = tl.load(block_tables_ptr + seq * stride_bt + t // PAGE, mask=valid, other=0)
            slot = page.to(tl.int64) * PAGE + t % PAGE
            kv_offsets = slot[:, None] * slot_stride + kv_head * HEAD_DIM + d[None, :]
            k = tl.load(k_ptr + kv_offsets, mask=valid[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
            scores = tl.where(valid[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            p = tl.exp(scores - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            v = tl.load(v_ptr + kv_offsets, mask=valid[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new

        out = acc / l_i[:, None]
        tl.store(
            out_ptr + seq * stride_o_tok + heads[:, None] * stride_o_head + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=q_mask,
        )


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
) -> torch.Tensor:
    """q `[batch, heads, head_dim]` (one token per sequence); caches `[blocks, page, kv_heads, head_dim]`."""
    batch, num_heads, head_dim = q.shape
    _, page, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    _decode_kernel[(batch, num_kv_heads)](
        q,
        k_cache,
        v_cache,
        out,
        block_tables,
        context_lens,
        head_dim**-0.5,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        block_tables.stride(0),
        NUM_KV_HEADS=num_kv_heads,
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        PAGE=page,
        BLOCK_N=64,
        # float32 caches (tests, parity runs) get exact float32 products rather than TF32's 10-bit mantissa
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return out
