"""CUDA graphs of the model, captured at start-up: decode steps for a ladder of batch sizes, and
mixed steps (prompt chunks beside decodes) for a ladder of token counts.

A step of a small model is dozens of tiny kernels per layer; launched one by one from Python the GPU
idles between them (the transformers baseline spends ~79 ms a token that way). Replaying a captured
graph launches them all at once. A graph replays fixed addresses, so every input lives in a static
buffer that `run` fills; a step is padded up to the next captured size, and the padding rows write
their K/V into a scratch block that no sequence owns.

- `DecodeGraphs` (one token per sequence) capture the whole step, LM head included, with attention
  in its decode form.
- `MixedGraphs` capture the decoder body for a number of tokens, with attention in its varlen form,
  whose grid covers any split of those tokens into up to `max_seqs` sequences (padding sequences are
  empty); the LM head then runs on the sequences' last tokens alone. Above the largest size a step
  runs eagerly: its GPU time then exceeds the launches' host time anyway.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from rich.progress import Progress

from r1serve.model.attention import AttentionMetadata
from r1serve.packed_step import PackedStep, TokenFeed

MIXED_GRAPH_TOKENS = (16, 32, 64, 128, 192, 256, 384, 512, 640, 768, 896, 1024)


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to max_batch (as vLLM does)."""
    sizes = [s for s in (1, 2, 4, 8) if s <= max_batch]
    sizes += list(range(16, max_batch + 1, 16))
    return sizes or [1]


@dataclass(frozen=True)
class CacheLayout:
    """What a graph family needs of the KV cache: its static block tables are `max_blocks_per_seq`
    wide, and padding rows write to `scratch_block`, which no sequence owns."""

    max_blocks_per_seq: int
    block_size: int
    scratch_block: int
    max_context_len: int
    device: torch.device


class HostStaging:
    """One pinned host buffer per graph family: a step's inputs are written into it as one block and
    copied to the device with one copy. Writing waits for the previous copy to have been done: a
    step that samples nothing (a prompt chunk short of its end) has no host sync of its own."""

    def __init__(self, numel: int, device: torch.device) -> None:
        self.device = device
        host = torch.zeros(numel, dtype=torch.int64)
        # on the CPU (the tests' stand-in for a GPU) a copy is synchronous: nothing to wait for
        cuda = device.type == "cuda"
        self._host = host.pin_memory() if cuda else host
        self._copied = torch.cuda.Event() if cuda else None

    def array(self) -> np.ndarray:
        """The buffer, free to write (the previous copy has been done)."""
        if self._copied is not None:
            self._copied.synchronize()
        return self._host.numpy()

    def upload(self, n: int) -> torch.Tensor:
        staged = self._host[:n].to(self.device, non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        return staged


class CapturedGraphs:
    """Graphs of one forward function for a ladder of sizes, sharing one memory pool."""

    graphs: dict[int, torch.cuda.CUDAGraph]
    outputs: dict[int, torch.Tensor]

    def _capture(
        self,
        forward: Callable[..., torch.Tensor],
        args_by_size: dict[int, tuple],
        device: torch.device,
        label: str,
        progress: bool,
    ) -> None:
        self.graphs, self.outputs = {}, {}
        self._device = device
        pool = None
        try:
            with Progress(disable=not progress, transient=True) as bar:
                task = bar.add_task(label, total=len(args_by_size))
                # largest first, so the smaller ones reuse its memory pool
                for size in sorted(args_by_size, reverse=True):
                    args = args_by_size[size]
                    forward(*args)  # warm-up outside the graph: lazy init, Triton compilation
                    torch.cuda.synchronize(device)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        self.outputs[size] = forward(*args)
                    pool = graph.pool()
                    self.graphs[size] = graph
                    bar.advance(task)
            torch.cuda.synchronize(device)
        except BaseException:
            # the runner never gets this object to release: the graphs captured so far must not
            # outlive the failure (their NCCL collectives would hang the group's teardown)
            self.release(sync=False)
            raise

    def _feed(self, host: np.ndarray, at: int, fed: Sequence[int], feed: TokenFeed | None) -> int:
        """Stages a TokenFeed's destinations (indices into `input_ids`) and source rows after the
        step's inputs; returns where the staged block ends."""
        if feed is None:
            return at
        k = len(fed)
        host[at : at + k] = fed
        host[at + k : at + 2 * k] = feed.rows
        return at + 2 * k

    def _apply_feed(self, staged: torch.Tensor, at: int, feed: TokenFeed | None) -> None:
        """After the step's inputs are in place: the fed input tokens from the device."""
        if feed is not None:
            k = len(feed.rows)
            feed.write(self.input_ids, staged[at : at + k], staged[at + k : at + 2 * k])

    def release(self, sync: bool = True) -> None:
        """Frees the graphs. Call it before destroying a process group whose collectives they captured:
        while such a graph lives, destroying or aborting the NCCL group does not return (pytorch#115388;
        both hung on two H200s)."""
        if sync:
            torch.cuda.synchronize(self._device)
        for graph in self.graphs.values():
            graph.reset()
        self.graphs.clear()
        self.outputs.clear()


class DecodeGraphs(CapturedGraphs):
    def __init__(
        self,
        forward: Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor],
        cache: CacheLayout,
        *,
        max_batch: int,
        progress: bool = True,
    ) -> None:
        """`forward(input_ids, positions, meta)`: the logits of a decode step."""
        self.block_size = block_size = cache.block_size
        self.scratch_block = scratch_block = cache.scratch_block
        max_blocks_per_seq, device = cache.max_blocks_per_seq, cache.device
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
        self._staging = HostStaging(n * (6 + max_blocks_per_seq), device)  # (+ a TokenFeed's 2 rows)
        self._capture(
            forward,
            {
                size: (
                    self.input_ids[:size],
                    self.positions[:size],
                    AttentionMetadata(
                        slot_mapping=self.slot_mapping[:size],
                        cu_seqlens_q=cu_seqlens[: size + 1],
                        start_pos=self.positions[:size],
                        context_lens=self.context_lens[:size],
                        block_tables=self.block_tables[:size],
                        max_query_len=1,
                        max_context_len=cache.max_context_len,
                    ),
                )
                for size in self.sizes
            },
            device,
            "capturing decode CUDA graphs",
            progress,
        )

    def fits(self, token_counts: Sequence[int]) -> bool:
        return len(token_counts) <= self.max_batch and all(n == 1 for n in token_counts)

    def run(
        self,
        token_ids: Sequence[int],
        positions: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        feed: TokenFeed | None = None,
    ) -> torch.Tensor:
        """One decode step for `len(token_ids)` sequences; returns the logits rows of the real ones."""
        batch = len(token_ids)
        size = next(s for s in self.sizes if s >= batch)
        width = self.block_tables.shape[1]
        host = self._staging.array()
        n = stage_decode_inputs(
            host, token_ids, positions, block_tables,
            size=size, scratch_block=self.scratch_block, block_size=self.block_size, width=width,
        )  # fmt: skip
        staged = self._staging.upload(self._feed(host, n, [] if feed is None else feed.chunks, feed))
        self.input_ids[:size].copy_(staged[0:size])
        self.positions[:size].copy_(staged[size : 2 * size])
        self.slot_mapping[:size].copy_(staged[2 * size : 3 * size])
        self.context_lens[:size].copy_(staged[3 * size : 4 * size])
        self.block_tables[:size].copy_(staged[4 * size : n].view(size, width))
        self._apply_feed(staged, n, feed)
        self.graphs[size].replay()
        return self.outputs[size][:batch]


class MixedGraphs(CapturedGraphs):
    def __init__(
        self,
        body: Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor],
        cache: CacheLayout,
        *,
        max_seqs: int,
        progress: bool = True,
    ) -> None:
        """`body(input_ids, positions, meta)`: hidden states `[tokens, hidden]` (the decoder without
        its LM head), with attention that takes the varlen form for `max_query_len` > 1."""
        self.sizes = list(MIXED_GRAPH_TOKENS)
        self.max_tokens, self.max_seqs, self.width = self.sizes[-1], max_seqs, cache.max_blocks_per_seq
        self.scratch_slot = cache.scratch_block * cache.block_size
        device, scratch_block = cache.device, cache.scratch_block
        t, s = self.max_tokens, max_seqs
        self.input_ids = torch.zeros(t, dtype=torch.int64, device=device)
        self.positions = torch.zeros(t, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((t,), self.scratch_slot, dtype=torch.int64, device=device)
        self.cu_seqlens = torch.zeros(s + 1, dtype=torch.int32, device=device)  # all empty at capture
        self.start_pos = torch.zeros(s, dtype=torch.int64, device=device)
        self.context_lens = torch.zeros(s, dtype=torch.int64, device=device)
        self.last_token = torch.zeros(s, dtype=torch.int64, device=device)
        self.block_tables = torch.full((s, self.width), scratch_block, dtype=torch.int32, device=device)
        self._staging = HostStaging(3 * t + 6 * s + 1 + s * self.width, device)  # (+ a TokenFeed's)
        meta = dict(
            cu_seqlens_q=self.cu_seqlens, start_pos=self.start_pos, context_lens=self.context_lens,
            block_tables=self.block_tables, max_context_len=cache.max_context_len,
        )  # fmt: skip
        self._capture(
            body,
            {
                size: (
                    self.input_ids[:size],
                    self.positions[:size],
                    # every sequence may have up to `size` tokens: the launch shape covers any split
                    AttentionMetadata(slot_mapping=self.slot_mapping[:size], max_query_len=size, **meta),
                )
                for size in self.sizes
            },
            device,
            "capturing mixed-step CUDA graphs",
            progress,
        )

    def fits(self, step: PackedStep) -> bool:
        return step.num_tokens <= self.max_tokens and step.count <= self.max_seqs

    def run(self, step: PackedStep, feed: TokenFeed | None = None) -> torch.Tensor:
        """The hidden states of each sequence's last token, `[count, hidden]`."""
        n, count = step.num_tokens, step.count
        size = next(s for s in self.sizes if s >= n)
        width = step.tables.shape[1]
        host = self._staging.array()
        total = stage_mixed_inputs(
            host, step, size=size, max_seqs=self.max_seqs, scratch_slot=self.scratch_slot
        )
        fed = [] if feed is None else step.last_token[feed.chunks]
        staged = self._staging.upload(self._feed(host, total, fed, feed))
        s = self.max_seqs
        self.input_ids[:size].copy_(staged[0:size])
        self.positions[:size].copy_(staged[size : 2 * size])
        self.slot_mapping[:size].copy_(staged[2 * size : 3 * size])
        at = 3 * size
        self.cu_seqlens.copy_(staged[at : at + s + 1])
        self.start_pos.copy_(staged[at + s + 1 : at + 2 * s + 1])
        self.context_lens.copy_(staged[at + 2 * s + 1 : at + 3 * s + 1])
        self.last_token[:count].copy_(staged[at + 3 * s + 1 : at + 3 * s + 1 + count])
        # rows past `count` and columns past `width` keep older ids: no query reads them
        self.block_tables[:count, :width].copy_(staged[at + 3 * s + 1 + count : total].view(count, width))
        self._apply_feed(staged, total, feed)
        self.graphs[size].replay()
        return self.outputs[size].index_select(0, self.last_token[:count])


def stage_mixed_inputs(
    host: np.ndarray, step: PackedStep, *, size: int, max_seqs: int, scratch_slot: int
) -> int:
    """Write a packed step padded to `size` tokens and `max_seqs` sequences into `host` (int64) as
    one block: input ids, positions, slots (`size` each; padding tokens write to the scratch slot),
    cu_seqlens (`max_seqs + 1`; padding sequences are empty), start positions and context lengths
    (`max_seqs` each), the last token of each real sequence, then its `[count, width]` block
    tables. Returns the number of values written."""
    n, count, s = step.num_tokens, step.count, max_seqs
    cols = np.zeros((3, size), dtype=np.int64)
    cols[0, :n] = step.input_ids
    cols[1, :n] = step.positions
    cols[2, :n] = step.slots
    cols[2, n:] = scratch_slot
    seqs = np.zeros((2, s), dtype=np.int64)
    seqs[0, :count] = step.start
    seqs[1, :count] = step.end
    at = 3 * size
    host[:at] = cols.ravel()
    host[at : at + count + 1] = step.cu_seqlens
    host[at + count + 1 : at + s + 1] = n
    host[at + s + 1 : at + 3 * s + 1] = seqs.ravel()
    at += 3 * s + 1
    host[at : at + count] = step.last_token
    at += count
    tables = step.tables.ravel()
    host[at : at + len(tables)] = tables
    return at + len(tables)


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
    n_cols = 4 * size
    tables = host[n_cols : n_cols + size * width].reshape(size, width)
    tables.fill(scratch_block)
    # one pass over all tables rather than a numpy assignment per row (~10% less at batch 256 on the
    # CPU); reading the tables' Python ints is most of what is left
    lens = np.fromiter(map(len, block_tables), np.int64, batch)
    tables[:batch][np.arange(width) < lens[:, None]] = np.fromiter(
        itertools.chain.from_iterable(block_tables), np.int64, int(lens.sum())
    )
    cols = np.zeros((4, size), dtype=np.int64)
    cols[0, :batch] = token_ids
    cols[1, :batch] = pos
    cols[2, :] = scratch_block * block_size
    cols[2, :batch] = tables[np.arange(batch), pos // block_size] * block_size + pos % block_size
    cols[3, :] = 1
    cols[3, :batch] = pos + 1
    host[:n_cols] = cols.ravel()
    return n_cols + size * width
