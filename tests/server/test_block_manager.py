"""Paged KV bookkeeping: allocation, freeing, prefix cache and reference counts."""

import pytest
from r1serve.engine.block_manager import BlockManager
from r1serve.engine.sequence import SamplingParams, Sequence

BS = 4


def seq(tokens: list[int]) -> Sequence:
    return Sequence(tokens, SamplingParams())


def computed(bm: BlockManager, s: Sequence) -> Sequence:
    """As if the engine had computed every token of `s`."""
    s.num_computed_tokens = len(s)
    bm.commit(s)
    return s


def test_allocate_and_free_return_every_block() -> None:
    bm = BlockManager(8, BS)
    a = seq(list(range(10)))  # 3 blocks
    bm.allocate(a)
    assert len(a.block_table) == 3 and bm.num_free_blocks == 5
    assert bm.usage == pytest.approx(3 / 8)
    bm.free_seq(a)
    assert bm.num_free_blocks == 8 and bm.usage == 0 and a.block_table == []


def test_grow_adds_a_block_at_the_boundary_only() -> None:
    bm = BlockManager(8, BS)
    a = seq([1, 2, 3, 4])
    bm.allocate(a)
    assert len(a.block_table) == 1
    bm.grow(a, 4)
    assert len(a.block_table) == 1
    bm.grow(a, 5)
    assert len(a.block_table) == 2


def test_shared_prefix_reuses_full_blocks_with_ref_counts() -> None:
    bm = BlockManager(8, BS)
    prefix = [7, 7, 7, 7, 8, 8, 8, 8]
    a = seq([*prefix, 1, 2])
    bm.allocate(a)
    computed(bm, a)
    b = seq([*prefix, 3])
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2]
    assert b.num_cached_tokens == 8 and b.num_computed_tokens == 8
    assert [bm.blocks[i].ref_count for i in b.block_table[:2]] == [2, 2]
    assert b.block_table[2] != a.block_table[2]  # partial block never shared
    bm.free_seq(a)
    assert [bm.blocks[i].ref_count for i in b.block_table[:2]] == [1, 1]
    assert bm.num_free_blocks == 8 - 3


def test_freed_blocks_stay_cached_until_reused() -> None:
    bm = BlockManager(4, BS)
    a = seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    bm.allocate(a)
    computed(bm, a)
    bm.free_seq(a)
    again = seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    bm.allocate(again)
    assert again.num_cached_tokens == 8


def test_identical_prompt_recomputes_its_last_token() -> None:
    bm = BlockManager(4, BS)
    a = seq([1, 2, 3, 4, 5, 6, 7, 8])
    bm.allocate(a)
    computed(bm, a)
    b = seq([1, 2, 3, 4, 5, 6, 7, 8])
    bm.allocate(b)
    assert b.num_cached_tokens == 8 and b.num_computed_tokens == 7  # logits of the last token are needed


def test_uncomputed_blocks_are_not_shared() -> None:
    bm = BlockManager(8, BS)
    a = seq([1, 2, 3, 4, 5])
    bm.allocate(a)  # allocated, but its K/V is not computed yet
    b = seq([1, 2, 3, 4, 5])
    bm.allocate(b)
    assert b.num_cached_tokens == 0 and set(a.block_table).isdisjoint(b.block_table)


def test_reused_free_block_drops_its_stale_hash() -> None:
    bm = BlockManager(2, BS)
    a = seq([1, 2, 3, 4, 5])
    bm.allocate(a)
    computed(bm, a)
    bm.free_seq(a)
    b = seq([9, 9, 9, 9, 9, 9, 9])  # takes both blocks, evicting a's cached prefix
    bm.allocate(b)
    bm.free_seq(b)
    c = seq([1, 2, 3, 4, 5])
    bm.allocate(c)
    assert c.num_cached_tokens == 0


def test_can_allocate_counts_hits_on_blocks_in_use() -> None:
    bm = BlockManager(3, BS)
    a = seq([1, 2, 3, 4, 5, 6, 7, 8])
    bm.allocate(a)
    computed(bm, a)
    assert bm.num_free_blocks == 1
    assert bm.can_allocate(seq([1, 2, 3, 4, 5, 6, 7, 8, 9]))  # 2 shared + 1 new
    assert not bm.can_allocate(seq([5, 5, 5, 5, 5, 5, 5, 5]))


def test_double_free_is_caught() -> None:
    bm = BlockManager(2, BS)
    a = seq([1])
    bm.allocate(a)
    table = list(a.block_table)
    bm.free_seq(a)
    a.block_table = table
    with pytest.raises(AssertionError):
        bm.free_seq(a)


def test_blocks_never_used_go_first_and_a_huge_cache_costs_nothing_up_front() -> None:
    """A small model on a large GPU has tens of millions of blocks: none is made before it is used,
    and a block never used is handed out before a freed one, whose cached prefix survives."""
    bm = BlockManager(10**9, BS)
    assert bm.blocks == [] and bm.num_free_blocks == 10**9 and bm.usage == 0
    a = seq(list(range(8)))
    bm.allocate(a)
    computed(bm, a)
    a_blocks = list(a.block_table)
    bm.free_seq(a)
    b = seq(list(range(100, 108)))
    bm.allocate(b)
    assert not set(b.block_table) & set(a_blocks)  # fresh blocks, not a's cached ones
    again = seq([*range(8), 9])
    bm.allocate(again)
    assert again.block_table[:2] == a_blocks and again.num_cached_tokens == 8
    assert bm.num_free_blocks == 10**9 - 5
