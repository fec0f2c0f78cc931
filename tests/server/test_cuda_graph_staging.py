"""The host half of a mixed-step CUDA graph (`stage_mixed_inputs`): how a packed step is padded into
the graph's static buffers. The device half runs only on a GPU (tests/server/test_gpu_fast_path.py);
the padding's effect on the attention kernel is checked in the Triton interpreter
(tests/server/test_paged_prefill_attention.py)."""

from __future__ import annotations

import numpy as np
import pytest
from r1serve.cuda_graphs import stage_mixed_inputs
from r1serve.packed_step import ScheduledSeq, pack

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
