"""Paged attention as one Triton kernel (the GPU fast path), for decode, prefill and mixed steps.

A program takes BLOCK_Q query tokens of one sequence times the GQA group of query heads that share
one KV head: its `BLOCK_Q * GROUP_PAD` rows (token-major) form the M side of each `tl.dot`, so every
K/V tile is read once per group, not once per query head. It streams the sequence's cache through
its block table with an online softmax up to the causal limit of its last query token: first the
blocks that every row sees whole, without masks, then the few that straddle the diagonal, masked
per row (flash-attention's split; the rows and the sequence search follow vLLM's "unified attention").

Two specialisations of the same kernel:
- decode (`paged_decode_attention`, one token per sequence): one program per (sequence, KV head,
  split of the context); everything it needs comes from `context_lens` and the block table, so the
  loop bounds are tensors and the step can be captured in a CUDA graph. With few sequences, one
  program per (sequence, KV head) would leave most of the GPU idle while each walks its whole context
  (at batch 1 on an H200, attention over 800 tokens took a third of the 1.5B shape's step): the
  context is then split over up to MAX_SPLITS programs, and a second kernel merges their partial
  softmaxes (flash-decoding). The split count depends on the batch and the card alone, never on the
  context lengths, so a captured graph stays valid.
- varlen (`paged_varlen_attention`, any query lengths): query tiles of all sequences are numbered
  as if each sequence's tiles started at `cu_seqlens_q[i] // BLOCK_Q + i`, which over-counts by at
  most one tile per sequence; the grid covers `num_tokens // BLOCK_Q + batch` tiles and each
  program finds its sequence by binary search over `cu_seqlens_q` (surplus ones return at once).
  No host round trip, so a step with prompt chunks syncs the GPU no more than the decode step does.

`attention.reference_paged_attention` (plain PyTorch) is the reference the tests compare against.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from r1serve.model.kernel_compile import launch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the reference path is used
    triton = None

LOG2E = math.log2(math.e)
MAX_SPLITS = 32  # a power of two (the merge kernel's tl.arange)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def decode_splits(batch: int, kv_heads: int, sm_count: int) -> int:
    """Context splits per (sequence, KV head) for a decode step: enough programs for two per SM, and
    one split (no merge kernel) once the sequences alone fill the GPU."""
    programs = batch * kv_heads
    if programs >= sm_count:
        return 1
    return min(MAX_SPLITS, 1 << (-(-2 * sm_count // programs) - 1).bit_length())


def supports_head_dim(head_dim: int) -> bool:
    """Triton is installed and head_dim is a power of two (tl.arange needs one), >= 16 (tl.dot)."""
    return triton is not None and head_dim >= 16 and head_dim & (head_dim - 1) == 0


def supports(q: torch.Tensor) -> bool:
    """The kernel runs on CUDA tensors of a supported head_dim, contiguous within a head (the caches
    are contiguous: ModelRunner allocates them)."""
    return q.is_cuda and supports_head_dim(q.shape[-1]) and q.stride(-1) == 1


@dataclass(frozen=True)
class TileConfig:
    """Launch shape of the kernel; `for_step` picks the varlen one, the microbenchmark sweeps others."""

    block_q: int  # query tokens per program
    block_n: int = 64  # cache tokens per inner step
    num_warps: int = 4
    num_stages: int = 3

    @staticmethod
    def for_step(max_query_len: int, group: int, head_dim: int) -> TileConfig:
        # ~64 rows per program, 4 warps, 2 stages: on an H200 a 1,024-token chunk beside 63 decodes
        # took 0.032 ms a layer against 0.054 with flash-attention's 128 rows, 8 warps, 3 stages
        # (both shapes; `python -m bench.attention --sweep`, docs/PERFORMANCE.md): twice the
        # programs, two of them resident per SM. Fewer tokens when every sequence is short, since
        # rows past a sequence's end are computed and dropped. tl.dot needs M >= 16.
        group_pad = triton.next_power_of_2(group)
        block_q = min(triton.next_power_of_2(max_query_len), max(1, 64 // group_pad))
        block_q = max(block_q, triton.cdiv(16, group_pad))
        # wider heads (256) keep 8 warps: 4 would spill registers (compiled for sm_90)
        rows = block_q * group_pad
        return TileConfig(block_q=block_q, num_warps=8 if rows * head_dim > 64 * 128 else 4, num_stages=2)


# Swept on an H200 (`python -m bench.attention --sweep --cases decode`, docs/PERFORMANCE.md): against
# 4 warps and 3 stages, 2 and 2 read 256 offline-like 1.5B contexts 11% faster (3.25 TB/s of the
# card's 4.06) and was at most 1% slower on any other decode case of either shape.
DECODE_TILE = TileConfig(block_q=1, block_n=64, num_warps=2, num_stages=2)


if triton is not None:

    @triton.jit
    def _attend(
        acc,
        l_i,
        m_i,
        q,
        q_pos,
        k_ptr,
        v_ptr,
        table_ptr,
        kv_head,
        kv_start,
        kv_end,
        qk_scale,
        NUM_KV_HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        PAGE: tl.constexpr,
        BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
        MASKED: tl.constexpr,
    ):
        """Online softmax of the rows `q` [M, HEAD_DIM] over cache positions kv_start..kv_end of one
        sequence (table_ptr: its block table row). MASKED: row r sees position t only if
        t <= q_pos[r] (and t < kv_end); unmasked, the caller guarantees every row sees every position."""
        d = tl.arange(0, HEAD_DIM)
        slot_stride = NUM_KV_HEADS * HEAD_DIM
        for start in range(kv_start, kv_end, BLOCK_N):
            t = start + tl.arange(0, BLOCK_N)
            if MASKED:
                valid = t < kv_end
                page = tl.load(table_ptr + t // PAGE, mask=valid, other=0)
            else:
                page = tl.load(table_ptr + t // PAGE)
            slot = page.to(tl.int64) * PAGE + t % PAGE
            kv_offsets = slot[:, None] * slot_stride + kv_head * HEAD_DIM + d[None, :]
            if MASKED:
                k = tl.load(k_ptr + kv_offsets, mask=valid[:, None], other=0.0)
                v = tl.load(v_ptr + kv_offsets, mask=valid[:, None], other=0.0)
            else:
                k = tl.load(k_ptr + kv_offsets)
                v = tl.load(v_ptr + kv_offsets)
            # scores in log2 units: exp2 is one instruction, exp is two
            scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            if MASKED:
                # q_pos < kv_end for every row that is kept, so this also drops t >= kv_end
                scores = tl.where(t[None, :] <= q_pos[:, None], scores, float("-inf"))
            # every row sees position 0 in the first block, so m_new is finite from then on
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            p = tl.math.exp2(scores - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
        return acc, l_i, m_i

    @triton.jit
    def _find_sequence(cu_seqlens_ptr, tile, batch, BLOCK_Q: tl.constexpr):
        """The sequence i whose tiles start at or before `tile`: largest i with
        cu_seqlens[i] // BLOCK_Q + i <= tile (that start is strictly increasing in i)."""
        lo = 0
        hi = batch
        while lo < hi:
            mid = (lo + hi) // 2
            if tl.load(cu_seqlens_ptr + mid) // BLOCK_Q + mid <= tile:
                lo = mid + 1
            else:
                hi = mid
        return lo - 1

    # batch and the block-table width change every step; specialised (==1, multiple of 16) they
    # would compile new variants mid-serving
    @triton.jit(do_not_specialize=["batch", "stride_bt"])
    def _paged_attention_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        out_ptr,
        part_ptr,  # decode with SPLITS > 1: [batch, heads, SPLITS, HEAD_DIM + 2] float32
        block_tables_ptr,
        cu_seqlens_ptr,
        pos_ptr,  # varlen: start_pos; decode: context_lens
        batch,
        qk_scale,
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
        BLOCK_Q: tl.constexpr,
        BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
        DECODE: tl.constexpr,
        SPLITS: tl.constexpr,
    ):
        kv_head = tl.program_id(1)
        if DECODE:
            # one token per sequence, the last of its context; cu_seqlens is not read
            seq = tl.program_id(0)
            q_start = seq
            q_len = 1
            tile_start = 0
            start_pos = tl.load(pos_ptr + seq) - 1
        else:
            # in reverse, so the heaviest tiles (a prompt's last ones) start first and the light ones
            # fill in behind them rather than leaving a long tail
            tile = tl.num_programs(0) - 1 - tl.program_id(0)
            seq = _find_sequence(cu_seqlens_ptr, tile, batch, BLOCK_Q)
            q_start = tl.load(cu_seqlens_ptr + seq)
            q_len = tl.load(cu_seqlens_ptr + seq + 1) - q_start
            tile_start = (tile - (q_start // BLOCK_Q + seq)) * BLOCK_Q
            start_pos = tl.load(pos_ptr + seq)
        if tile_start < q_len:
            rows = tl.arange(0, BLOCK_Q * GROUP_PAD)
            token = tile_start + rows // GROUP_PAD  # index in the sequence's query tokens
            g = rows % GROUP_PAD
            row_mask = (token < q_len) & (g < GROUP)
            head = kv_head * GROUP + g
            d = tl.arange(0, HEAD_DIM)
            q_row = (q_start + token).to(tl.int64) * stride_q_tok + head * stride_q_head
            q = tl.load(q_ptr + q_row[:, None] + d[None, :], mask=row_mask[:, None], other=0.0)

            q_pos = start_pos + token
            # the first row's causal limit bounds the blocks every row sees whole; the last row's
            # bounds the whole loop
            full_end = (start_pos + tile_start + 1) // BLOCK_N * BLOCK_N
            kv_end = start_pos + tl.minimum(tile_start + BLOCK_Q, q_len)
            m_i = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_Q * GROUP_PAD], tl.float32)
            acc = tl.zeros([BLOCK_Q * GROUP_PAD, HEAD_DIM], tl.float32)
            table_ptr = block_tables_ptr + seq * stride_bt
            lo = 0
            hi = kv_end
            if SPLITS > 1:
                # this program's share of the context, whole BLOCK_N blocks; the last ones may be empty
                per_split = tl.cdiv(tl.cdiv(kv_end, BLOCK_N), SPLITS) * BLOCK_N
                lo = tl.program_id(2) * per_split
                hi = tl.minimum(lo + per_split, kv_end)
            acc, l_i, m_i = _attend(
                acc, l_i, m_i, q, q_pos, k_ptr, v_ptr, table_ptr, kv_head, lo, tl.minimum(hi, full_end),
                qk_scale, NUM_KV_HEADS, HEAD_DIM, PAGE, BLOCK_N, DOT_PRECISION, MASKED=False,
            )  # fmt: skip
            acc, l_i, m_i = _attend(
                acc, l_i, m_i, q, q_pos, k_ptr, v_ptr, table_ptr, kv_head, tl.maximum(lo, full_end), hi,
                qk_scale, NUM_KV_HEADS, HEAD_DIM, PAGE, BLOCK_N, DOT_PRECISION, MASKED=True,
            )  # fmt: skip

            if SPLITS > 1:
                # unnormalised: _merge_splits weighs the splits by their maxima (m_i: -inf, l_i: 0
                # for an empty split)
                part = part_ptr + ((seq * (NUM_KV_HEADS * GROUP) + head) * SPLITS + tl.program_id(2)) * (
                    HEAD_DIM + 2
                )
                tl.store(part[:, None] + d[None, :], acc, mask=row_mask[:, None])
                tl.store(part + HEAD_DIM, m_i, mask=row_mask)
                tl.store(part + HEAD_DIM + 1, l_i, mask=row_mask)
            else:
                out = acc / l_i[:, None]
                o_row = (q_start + token).to(tl.int64) * stride_o_tok + head * stride_o_head
                tl.store(
                    out_ptr + o_row[:, None] + d[None, :],
                    out.to(out_ptr.dtype.element_ty),
                    mask=row_mask[:, None],
                )

    @triton.jit
    def _merge_splits(
        part_ptr, out_ptr, stride_o_tok, stride_o_head, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
        SPLITS: tl.constexpr,
    ):  # fmt: skip
        """One program per (sequence, query head): the splits' partial softmaxes merged into the output."""
        seq = tl.program_id(0)
        head = tl.program_id(1)
        s = tl.arange(0, SPLITS)
        d = tl.arange(0, HEAD_DIM)
        part = part_ptr + ((seq * HEADS + head) * SPLITS + s) * (HEAD_DIM + 2)
        m = tl.load(part + HEAD_DIM)
        scale = tl.math.exp2(m - tl.max(m, 0))  # split 0 always holds position 0: the max is finite
        l_sum = tl.sum(tl.load(part + HEAD_DIM + 1) * scale, 0)
        acc = tl.sum(tl.load(part[:, None] + d[None, :]) * scale[:, None], 0)
        o = out_ptr + seq.to(tl.int64) * stride_o_tok + head * stride_o_head + d
        tl.store(o, (acc / l_sum).to(out_ptr.dtype.element_ty))


def _launch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor | None,
    positions: torch.Tensor,
    grid_tiles: int,
    tile: TileConfig,
    group_pad: int,
    splits: int = 1,
) -> torch.Tensor:
    """The decode form when cu_seqlens_q is None (positions: context_lens), else the varlen form
    (positions: start_pos). `splits` > 1 (decode form only): the context split over that many
    programs, merged by a second kernel."""
    _, num_heads, head_dim = q.shape
    _, page, num_kv_heads, _ = k_cache.shape
    decode = cu_seqlens_q is None
    # the kernel computes cache addresses from the shape alone (host-side check, no sync)
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous [blocks, page, kv_heads, head_dim]")
    out = torch.empty_like(q)
    part = out  # not read with one split
    if splits > 1:
        part = torch.empty(grid_tiles, num_heads, splits, head_dim + 2, dtype=torch.float32, device=q.device)
    launch(
        _paged_attention_kernel,
        (grid_tiles, num_kv_heads, splits),
        q,
        k_cache,
        v_cache,
        out,
        part,
        block_tables,
        positions if decode else cu_seqlens_q,  # a pointer the decode form does not read
        positions,
        block_tables.shape[0],
        head_dim**-0.5 * LOG2E,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        block_tables.stride(0),
        NUM_KV_HEADS=num_kv_heads,
        GROUP=num_heads // num_kv_heads,
        GROUP_PAD=group_pad,
        HEAD_DIM=head_dim,
        PAGE=page,
        BLOCK_Q=tile.block_q,
        BLOCK_N=tile.block_n,
        # float32 caches (tests, parity runs) get exact float32 products rather than TF32's 10-bit mantissa
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        DECODE=decode,
        SPLITS=splits,
        num_warps=tile.num_warps,
        num_stages=tile.num_stages,
    )
    if splits > 1:
        launch(
            _merge_splits, (grid_tiles, num_heads),
            part, out, out.stride(0), out.stride(1), HEADS=num_heads, HEAD_DIM=head_dim, SPLITS=splits,
        )  # fmt: skip
    return out


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    splits: int = 0,
    tile: TileConfig = DECODE_TILE,
) -> torch.Tensor:
    """q `[batch, heads, head_dim]` (one token per sequence, the last of its context); caches
    `[blocks, page, kv_heads, head_dim]`. Safe to capture in a CUDA graph. `splits`: context splits
    per (sequence, KV head), a power of two up to MAX_SPLITS (0: `decode_splits` picks); `tile`: the
    launch shape (block_q is 1; the microbenchmark sweeps the others)."""
    batch, num_heads, _ = q.shape
    kv_heads = k_cache.shape[2]
    group = num_heads // kv_heads
    # tl.dot needs M >= 16: the group's heads are padded to 16 rows
    group_pad = max(16, triton.next_power_of_2(group))
    sm_count = _sm_count(q.device.index or 0) if q.is_cuda else 1  # the interpreter: set `splits`
    splits = splits or decode_splits(batch, kv_heads, sm_count)
    return _launch(q, k_cache, v_cache, block_tables, None, context_lens, batch, tile, group_pad, splits)


def paged_varlen_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    start_pos: torch.Tensor,
    max_query_len: int,
    tile: TileConfig | None = None,
) -> torch.Tensor:
    """q `[num_tokens, heads, head_dim]` packed by `cu_seqlens_q`; token j of sequence i sits at
    position start_pos[i] + j and sees cache positions 0..start_pos[i] + j. Caches
    `[blocks, page, kv_heads, head_dim]` already hold this step's K/V. `tile` overrides the launch
    shape (the microbenchmark sweeps it); its `block_q * next_power_of_2(group)` must be >= 16."""
    num_tokens, num_heads, head_dim = q.shape
    group = num_heads // k_cache.shape[2]
    tile = tile or TileConfig.for_step(max_query_len, group, head_dim)
    group_pad = triton.next_power_of_2(group)
    grid_tiles = num_tokens // tile.block_q + block_tables.shape[0]
    return _launch(q, k_cache, v_cache, block_tables, cu_seqlens_q, start_pos, grid_tiles, tile, group_pad)
