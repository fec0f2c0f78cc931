"""Paged KV cache bookkeeping: fixed-size blocks with reference counts and a prefix cache.

A full block is identified by a hash chained over every token before it, so two requests that share
a prompt prefix share its blocks (as in vLLM / nano-vllm). Freed blocks keep their hash and content
until they are reused, so a repeated prompt (or a preempted sequence coming back) skips recompute.
A block is entered in the prefix cache only once its K/V has been computed, so no sequence can ever
read a block that another one is still filling.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from r1serve.engine.sequence import Sequence

NO_HASH = -1


def blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks that hold `num_tokens` tokens."""
    return -(-num_tokens // block_size)


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int = NO_HASH
    token_ids: tuple[int, ...] = field(default_factory=tuple)


def chain_hash(prev_hash: int, token_ids: tuple[int, ...]) -> int:
    return hash((prev_hash, token_ids))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.block_size = block_size
        self.num_blocks = num_blocks
        # Made on first use, in id order: a small model on a large GPU has tens of millions of blocks
        # (the tiny model on an H200: 32.8M), 44 s of start-up to make up front (dev VM). Ids past
        # len(blocks) are free and hold nothing, and go before any freed block, as they would at
        # the head of the free list.
        self.blocks: list[Block] = []
        self.hash_to_block: dict[int, int] = {}
        # Freed blocks in eviction order (least recently freed first); cached content survives here.
        self.free: OrderedDict[int, None] = OrderedDict()

    @property
    def num_free_blocks(self) -> int:
        return len(self.free) + self.num_blocks - len(self.blocks)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live sequences (cached-but-free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return blocks_for(num_tokens, self.block_size)

    # -- admission -------------------------------------------------------------------------------

    def _full_block_hashes(self, seq: Sequence, blocks: int | None = None) -> list[int]:
        """The chained hash of each full block of `seq` (of its first `blocks`), computed once per
        block (tokens only grow). A token not yet sampled (the engine's placeholder while its step
        runs) sits past the computed tokens: `commit` hashes only up to them, and admission hashes
        only sequences whose tokens are all known (the scheduler admits nothing in a step that
        preempted, and a preempted sequence's token in flight is read back before the next)."""
        bs, hashes = self.block_size, seq.block_hashes
        for i in range(len(hashes), len(seq) // bs if blocks is None else blocks):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            hashes.append(chain_hash(hashes[i - 1] if i else NO_HASH, tokens))
        return hashes

    def _prefix_hits(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix of `seq`, full blocks only."""
        hits: list[int] = []
        bs = self.block_size
        for i, h in enumerate(self._full_block_hashes(seq)):
            block_id = self.hash_to_block.get(h)
            # Compare the tokens too: a hash collision must never hand out someone else's K/V.
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            hits.append(block_id)
        return hits

    def can_allocate(self, seq: Sequence, reserve: int = 0) -> bool:
        hits = self._prefix_hits(seq)
        in_use_hits = sum(1 for b in hits if self.blocks[b].ref_count > 0)
        return self.blocks_for(len(seq)) - in_use_hits + reserve <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        """Give `seq` blocks for all its current tokens, reusing cached prefix blocks."""
        assert not seq.block_table, "sequence already holds blocks"
        hits = self._prefix_hits(seq)
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
        seq.block_table = list(hits)
        seq.num_hashed_blocks = len(hits)
        seq.num_cached_tokens = len(hits) * self.block_size
        # The last token is always computed again: its logits are what the next step samples from.
        seq.num_computed_tokens = min(seq.num_cached_tokens, len(seq) - 1)
        self._grow(seq, len(seq))

    def _take_free_block(self) -> int:
        if len(self.blocks) < self.num_blocks:  # one never used
            self.blocks.append(Block(len(self.blocks), ref_count=1))
            return len(self.blocks) - 1
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash != NO_HASH and self.hash_to_block.get(block.hash) == block_id:
            del self.hash_to_block[block.hash]
        block.hash, block.token_ids, block.ref_count = NO_HASH, (), 1
        return block_id

    def _grow(self, seq: Sequence, num_tokens: int) -> None:
        for _ in range(self.blocks_for(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self._take_free_block())

    # -- decode ----------------------------------------------------------------------------------

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(seq.block_table) <= self.num_free_blocks

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Make the block table cover `num_tokens` tokens (call can_grow first)."""
        self._grow(seq, num_tokens)

    def commit(self, seq: Sequence) -> None:
        """Enter the blocks that are now full and computed into the prefix cache."""
        bs = self.block_size
        full = min(seq.num_computed_tokens // bs, len(seq.block_table))
        if full <= seq.num_hashed_blocks:
            return
        hashes = self._full_block_hashes(seq, full)
        for i in range(seq.num_hashed_blocks, full):
            block = self.blocks[seq.block_table[i]]
            block.hash, block.token_ids = hashes[i], tuple(seq.token_ids[i * bs : (i + 1) * bs])
            # A duplicate (two identical prompts computed side by side) keeps the first entry.
            self.hash_to_block.setdefault(block.hash, block.block_id)
        seq.num_hashed_blocks = full

    # -- release ---------------------------------------------------------------------------------

    def free_seq(self, seq: Sequence) -> None:
        # Tail blocks go first in eviction order, so a shared prefix outlives the suffixes after it.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                self.free[block_id] = None
        seq.block_table = []
        seq.num_hashed_blocks = 0
        seq.num_computed_tokens = 0
