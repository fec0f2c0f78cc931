"""Attention over the paged KV cache.

The cache of one layer is two tensors `[num_blocks, block_size, num_kv_heads, head_dim]`; a
sequence's tokens live in the blocks its block table lists, token `p` at slot
`block_table[p // block_size] * block_size + p % block_size`. Tokens of all sequences in a step are
packed into one ragged batch `[num_tokens, heads, head_dim]`.

`store_kv` and `paged_attention` are the only two functions that touch the cache layout. On CUDA
`paged_attention` runs the Triton kernel (`triton_attention`); `reference_paged_attention`, plain
PyTorch, is what the CPU runs and what the kernel is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from r1serve.model import triton_attention


@dataclass
class AttentionMetadata:
    """Where the packed tokens of one step come from and go to; built once per step, shared by all layers."""

    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot each new token's K/V is written to
    cu_seqlens_q: torch.Tensor  # [batch + 1] int32: offsets of each sequence's tokens in the packed batch
    start_pos: torch.Tensor  # [batch] int64: tokens already cached before this step
    context_lens: torch.Tensor  # [batch] int64: start_pos + new tokens
    block_tables: torch.Tensor  # [batch, max_blocks] int32, padded with 0
    max_query_len: int
    max_context_len: int

    @cached_property
    def reference_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(index of each packed token in a [batch * max_query_len] padded layout, attention mask
        [batch, 1, max_query_len, max_context_len]) for the plain PyTorch path."""
        device = self.cu_seqlens_q.device
        query_lens = (self.cu_seqlens_q[1:] - self.cu_seqlens_q[:-1]).long()
        batch = query_lens.numel()
        seq_of_token = torch.repeat_interleave(torch.arange(batch, device=device), query_lens)
        offset_in_seq = (
            torch.arange(seq_of_token.numel(), device=device) - self.cu_seqlens_q[:-1].long()[seq_of_token]
        )
        padded_index = seq_of_token * self.max_query_len + offset_in_seq
        q_pos = self.start_pos[:, None] + torch.arange(self.max_query_len, device=device)[None, :]
        k_pos = torch.arange(self.max_context_len, device=device)
        # causal and inside the context; padding query rows see the whole context, so no row is
        # fully masked (that would give NaN), and their outputs are dropped
        mask = (k_pos[None, None, :] <= q_pos[:, :, None]) & (
            k_pos[None, None, :] < self.context_lens[:, None, None]
        )
        return padded_index, mask[:, None]


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Writes the new tokens' K/V `[num_tokens, kv_heads, head_dim]` into their cache slots."""
    k_cache.view(-1, *k.shape[1:])[slot_mapping] = k
    v_cache.view(-1, *v.shape[1:])[slot_mapping] = v


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata
) -> torch.Tensor:
    """Causal GQA attention of the packed queries `[num_tokens, heads, head_dim]` over each sequence's
    cached context (which already holds this step's K/V); returns `[num_tokens, heads, head_dim]`.
    CUDA runs the Triton kernel (its decode form for pure decode steps), the CPU the reference."""
    if not triton_attention.supports(q):
        return reference_paged_attention(q, k_cache, v_cache, meta)
    if meta.max_query_len == 1:
        return triton_attention.paged_decode_attention(
            q, k_cache, v_cache, meta.block_tables, meta.context_lens
        )
    return triton_attention.paged_varlen_attention(
        q, k_cache, v_cache, meta.block_tables, meta.cu_seqlens_q, meta.start_pos, meta.max_query_len
    )


def reference_paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata
) -> torch.Tensor:
    """`paged_attention` in plain PyTorch: every sequence padded to max_query_len, its context gathered
    through the block table and expanded to all query heads, masked SDPA."""
    _, num_heads, head_dim = q.shape
    batch = meta.block_tables.shape[0]
    padded_index, mask = meta.reference_layout

    def gather(cache: torch.Tensor) -> torch.Tensor:
        # [batch, blocks, block_size, kv_heads, d] -> [batch, heads, context, d]
        ctx = cache[meta.block_tables].flatten(1, 2)[:, : meta.max_context_len]
        # expanded rather than enable_gqa, so the memory-efficient CUDA kernel (which takes a mask) is usable
        return ctx.repeat_interleave(num_heads // ctx.shape[2], dim=2).transpose(1, 2)

    padded_q = q.new_zeros(batch * meta.max_query_len, num_heads, head_dim)
    padded_q[padded_index] = q
    padded_q = padded_q.view(batch, meta.max_query_len, num_heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(padded_q, gather(k_cache), gather(v_cache), attn_mask=mask)
    return out.transpose(1, 2).reshape(-1, num_heads, head_dim)[padded_index]
