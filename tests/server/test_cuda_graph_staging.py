"""The host side of the CUDA graph families (`cuda_graphs.py`): how a step is padded into a graph's
static buffers, and what a replay then sees and returns. There is no CUDA here, so a stand-in
replays a "graph" by running its function again on the same buffers (`Replay`); the real graphs
run against eager execution on a GPU (tests/server/test_gpu_fast_path.py), and the padding's effect
on the attention kernel is checked in the Triton interpreter
(tests/server/test_paged_prefill_attention.py)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from r1serve.cuda_graphs import CacheLayout, CapturedGraphs, DecodeGraphs, MixedGraphs, stage_mixed_inputs
from r1serve.model.attention import AttentionMetadata
from r1serve.packed_step import ScheduledSeq, TokenFeed, pack

SIZES = dict(block_size=4, num_blocks=20, max_model_len=64, vocab_size=100)


def test_a_mixed_step_is_padded_with_empty_sequences_and_scratch_slots() -> None:
    # a fresh 5-token prompt, a decode at position 6, a prefix-cached chunk of 3 at positions 8..10
    step = pack(
        [
            ScheduledSeq([1, 2, 3, 4, 5], 0, [3, 4]),
            ScheduledSeq([9], 6, [7, 8]),
            ScheduledSeq([10, 11, 12], 8, [0, 1, 2]),
        ],
        **SIZES,
    )
    size, max_seqs, scratch = 16, 5, 999
    host = np.full(200, -1, dtype=np.int64)
    total = stage_mixed_inputs(host, step, size=size, max_seqs=max_seqs, scratch_slot=scratch)

    ids, pos, slots = host[:size], host[size : 2 * size], host[2 * size : 3 * size]
    assert ids.tolist() == [1, 2, 3, 4, 5, 9, 10, 11, 12] + [0] * 7
    assert pos.tolist() == [0, 1, 2, 3, 4, 6, 8, 9, 10] + [0] * 7
    # slot = block_table[p // 4] * 4 + p % 4; padding tokens write to the scratch slot
    assert slots.tolist() == [12, 13, 14, 15, 16, 34, 8, 9, 10] + [scratch] * 7
    at = 3 * size
    cu = host[at : at + max_seqs + 1]
    assert cu.tolist() == [0, 5, 6, 9, 9, 9]  # two empty padding sequences
    start = host[at + max_seqs + 1 : at + 2 * max_seqs + 1]
    end = host[at + 2 * max_seqs + 1 : at + 3 * max_seqs + 1]
    assert start.tolist() == [0, 6, 8, 0, 0] and end.tolist() == [5, 7, 11, 0, 0]
    at += 3 * max_seqs + 1
    assert host[at : at + 3].tolist() == [4, 5, 8]  # each sequence's last token
    tables = host[at + 3 : total].reshape(3, -1)
    assert tables.tolist() == [[3, 4, 0], [7, 8, 0], [0, 1, 2]]
    assert (host[total:] == -1).all()


def test_pack_names_the_first_bad_entry() -> None:
    good = ScheduledSeq([1, 2], 0, [0])
    with pytest.raises(ValueError, match=r"batch\[1\]: 2 blocks cannot hold 9 tokens"):
        pack([good, ScheduledSeq([1], 8, [0, 1])], **SIZES)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 100\)"):
        pack([good, ScheduledSeq([100], 0, [0])], **SIZES)


class Replay:
    """Stands in for a captured CUDA graph (there is no CUDA here): replaying runs the captured
    function again on the same static buffers and writes its result into the same output tensor."""

    def __init__(self, forward, args, output: torch.Tensor) -> None:
        self.forward, self.args, self.output = forward, args, output

    def replay(self) -> None:
        self.output.copy_(self.forward(*self.args))


def stand_in_capture(self, forward, args_by_size, device, label, progress) -> None:
    self.graphs, self.outputs = {}, {}
    for size, args in args_by_size.items():
        self.outputs[size] = forward(*args)
        self.graphs[size] = Replay(forward, args, self.outputs[size])


def seen(ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
    """What a forward pass finds in the static buffers, one row per token: its id, position and slot,
    the sequences' cu_seqlens, start positions, context lengths and block tables (the same
    sequence-wide values on every row)."""
    per_seq = torch.cat(
        [meta.cu_seqlens_q.long(), meta.start_pos, meta.context_lens, meta.block_tables.long().flatten()]
    )
    return torch.cat(
        [torch.stack([ids, positions, meta.slot_mapping], 1), per_seq.expand(len(ids), -1)], 1
    ).float()


CACHE = CacheLayout(
    max_blocks_per_seq=4, block_size=4, scratch_block=19, max_context_len=16, device=torch.device("cpu")
)


def test_mixed_graphs_replay_the_padded_step_and_return_the_last_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(CapturedGraphs, "_capture", stand_in_capture)
    graphs = MixedGraphs(seen, CACHE, max_seqs=4, progress=False)
    batch = [
        ScheduledSeq([1, 2, 3, 4, 5], 0, [3, 4]),
        ScheduledSeq([9], 6, [7, 8]),
        ScheduledSeq([10, 11], 8, [0, 1, 2]),
    ]
    step = pack(batch, **SIZES)
    rows = graphs.run(step)  # 8 tokens: replays the graph of 16

    assert rows.shape[0] == 3  # one row per sequence: its last token (4, 5 and 7 of the step)
    assert rows[:, :3].tolist() == [[5, 4, 16], [9, 6, 34], [11, 9, 9]]
    cu, start, end = rows[0, 3:8], rows[0, 8:12], rows[0, 12:16]
    assert cu.tolist() == [0, 5, 6, 8, 8] and start.tolist() == [0, 6, 8, 0] and end.tolist() == [5, 7, 10, 0]
    tables = rows[0, 16:].view(4, 4)[:3, :3]
    assert tables.tolist() == [[3, 4, 0], [7, 8, 0], [0, 1, 2]]
    # padding tokens of the graph of 16 wrote to the scratch block's first slot
    assert graphs.slot_mapping[8:16].tolist() == [19 * 4] * 8


def test_decode_graphs_replay_the_padded_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CapturedGraphs, "_capture", stand_in_capture)
    graphs = DecodeGraphs(seen, CACHE, max_batch=4, progress=False)
    rows = graphs.run([7, 8, 9], [5, 0, 12], [[3, 4], [6], [0, 1, 2, 5]])  # replays the graph of 4

    assert rows.shape[0] == 3
    assert rows[:, :3].tolist() == [[7, 5, 17], [8, 0, 24], [9, 12, 20]]
    assert graphs.context_lens.tolist() == [6, 1, 13, 1]  # the padding row: one token in the scratch block
    assert graphs.block_tables[3].tolist() == [19] * 4


def test_a_failed_capture_frees_the_graphs_captured_so_far(monkeypatch: pytest.MonkeyPatch) -> None:
    """A capture that fails half-way (out of memory) leaves no graph alive: with tensor parallelism
    a live graph holding NCCL collectives hangs the group's teardown (pytorch#115388). CUDA's graph
    calls are stand-ins here."""
    freed = []

    class StandInGraph:
        def reset(self) -> None:
            freed.append(self)

        def pool(self) -> None:
            return None

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", StandInGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph, pool=None: contextlib.nullcontext())
    calls = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        if len(calls) == 3:  # the second size's warm-up, after the first size's graph exists
            raise torch.OutOfMemoryError("CUDA out of memory")
        return x * 2

    graphs = CapturedGraphs()
    with pytest.raises(torch.OutOfMemoryError):
        graphs._capture(forward, {4: (torch.ones(4),), 2: (torch.ones(2),)}, torch.device("cpu"), "", False)
    assert calls == [4, 4, 2] and len(freed) == 1 and graphs.graphs == {} and graphs.outputs == {}


def test_a_token_feed_writes_the_devices_tokens_over_the_fed_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asynchronous scheduling: the last token of the listed chunks comes from the previous step's
    sampled tensor (`TokenFeed`), in both graph families; the others keep their staged ids."""
    monkeypatch.setattr(CapturedGraphs, "_capture", stand_in_capture)
    sampled = torch.tensor([70, 71, 72])  # the previous step's tokens, rows 0..2
    decode = DecodeGraphs(seen, CACHE, max_batch=4, progress=False)
    rows = decode.run([0, 8, 0], [5, 0, 12], [[3, 4], [6], [0, 1, 2, 5]], TokenFeed(sampled, [0, 2], [2, 0]))
    assert rows[:, 0].tolist() == [72, 8, 70]

    mixed = MixedGraphs(seen, CACHE, max_seqs=4, progress=False)
    batch = [ScheduledSeq([1, 2, 3], 0, [3]), ScheduledSeq([0], 6, [7, 8]), ScheduledSeq([0], 4, [0, 1])]
    rows = mixed.run(pack(batch, **SIZES), TokenFeed(sampled, [1, 2], [1, 0]))
    assert rows[:, 0].tolist() == [3, 71, 70]
    assert mixed.input_ids[:5].tolist() == [1, 2, 3, 71, 70]
