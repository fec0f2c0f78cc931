"""CUDA graphs of the decode step, captured at start-up for a ladder of batch sizes.

A decode step of a small model is dozens of tiny kernels per layer; launched one by one from Python
the GPU idles between them (the transformers baseline spends ~79 ms a token that way). Replaying a
captured graph launches them all at once. A graph replays fixed addresses, so every input lives in a
static buffer that `run` fills; a batch is padded up to the next captured size, and the padding rows
write their K/V into a scratch block that no sequence owns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from rich.progress import Progress

from r1serve.model.attention import AttentionMetadata


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to max_batch (as vLLM does)."""
    sizes = [s for s in (1, 2, 4, 8) if s <= max_batch]
    sizes += list(range(16, max_batch + 1, 16))
    return sizes or [1]


class DecodeGraphs:
    def __init__(
        self,
        forward: Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor],
        *,
        max_batch: int,
        max_blocks_per_seq: int,
        block_size: int,
        scratch_block: int,
        max_context_len: int,
        device: torch.device,
        progress: bool = True,
    ) -> None:
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.sizes = batch_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        n = self.max_batch
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), scratch_block * block_size, dtype=torch.int64, device=device)
        self.context_lens = torch.ones(n, dtype=torch.int64, device=device)
        self.block_tables = torch.full(
            (n, max_blocks_per_seq), scratch_block, dtype=torch.int32, device=device
        )
        cu_seqlens = torch.arange(n + 1, dtype=torch.int32, device=device)
        # Host staging: one pinned buffer, one copy to the device per step. It is rewritten only after
        # the caller has read the previous step's logits, which waits for that copy to finish.
        self._host = torch.zeros(n * (4 + max_blocks_per_seq), dtype=torch.int64).pin_memory()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        pool = None
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("capturing CUDA graphs", total=len(self.sizes))
            for size in reversed(self.sizes):  # largest first, so the smaller ones reuse its memory pool
                meta = AttentionMetadata(
                    slot_mapping=self.slot_mapping[:size],
                    cu_seqlens_q=cu_seqlens[: size + 1],
                    start_pos=self.positions[:size],
                    context_lens=self.context_lens[:size],
                    block_tables=self.block_tables[:size],
                    max_query_len=1,
                    max_context_len=max_context_len,
                )
                args = (self.input_ids[:size], self.positions[:size], meta)
                forward(*args)  # warm-up outside the graph: lazy init, Triton compilation
                torch.cuda.synchronize(device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.outputs[size] = forward(*args)
                pool = graph.pool()
                self.graphs[size] = graph
                bar.advance(task)
        torch.cuda.synchronize(device)

    def release(self, sync: bool = True) -> None:
        """Frees the graphs. Call it before destroying a process group whose collectives they captured:
        while such a graph lives, destroying or aborting the NCCL group does not return (pytorch#115388;
        both hung on two H200s)."""
        if sync:
            torch.cuda.synchronize(self.input_ids.device)
        for graph in self.graphs.values():
            graph.reset()
        self.graphs.clear()
        self.outputs.clear()

    def fits(self, token_counts: Sequence[int]) -> bool:
        return len(token_counts) <= self.max_batch and all(n == 1 for n in token_counts)

    def run(
        self, token_ids: Sequence[int], positions: Sequence[int], block_tables: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """One decode step for `len(token_ids)` sequences; returns the logits rows of the real ones."""
        batch = len(token_ids)
        size = next(s for s in self.sizes if s >= batch)
        width = self.block_tables.shape[1]
        n = stage_decode_inputs(
            self._host.numpy(), token_ids, positions, block_tables,
            size=size, scratch_block=self.scratch_block, block_size=self.block_size, width=width,
        )  # fmt: skip
        staged = self._host[:n].to(self.input_ids.device, non_blocking=True)
        self.input_ids[:size].copy_(staged[0:size])
        self.positions[:size].copy_(staged[size : 2 * size])
        self.slot_mapping[:size].copy_(staged[2 * size : 3 * size])
        self.context_lens[:size].copy_(staged[3 * size : 4 * size])
        self.block_tables[:size].copy_(staged[4 * size : n].view(size, width))
        self.graphs[size].replay()
        return self.outputs[size][:batch]


def stage_decode_inputs(
    host: np.ndarray,
    token_ids: Sequence[int],
    positions: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    *,
    size: int,
    width: int,
    scratch_block: int,
    block_size: int,
) -> int:
    """Write a decode batch padded to `size` rows into `host` (int64) as one block: input ids,
    positions, slots, context lengths (`size` each), then the `[size, width]` block tables. Padding
    rows point at the scratch block. Returns the number of values written.

    The host half of a graph step, apart so that bench/host_overhead.py can time it without a GPU."""
    batch = len(token_ids)
    pos = np.asarray(positions, dtype=np.int64)
    tables = np.full((size, width), scratch_block, dtype=np.int64)
    for i, table in enumerate(block_tables):
        tables[i, : len(table)] = table
    cols = np.zeros((4, size), dtype=np.int64)
    cols[0, :batch] = token_ids
    cols[1, :batch] = pos
    cols[2, :] = scratch_block * block_size
    cols[2, :batch] = tables[np.arange(batch), pos // block_size] * block_size + pos % block_size
    cols[3, :] = 1
    cols[3, :batch] = pos + 1
    n_cols = 4 * size
    host[:n_cols] = cols.ravel()
    host[n_cols : n_cols + size * width] = tables.ravel()
    return n_cols + size * width
