"""Continuous batching: which sequences compute how many tokens in the next engine step.

Each step first gives every running sequence its next piece of work (one token when decoding, a
chunk of the prompt while prefilling), then admits waiting requests while the token budget, the
sequence limit and the free KV blocks allow. When the KV cache cannot hold the next token of a
running sequence, the newest running sequence is preempted: its blocks are freed and it goes back to
the front of the queue to be recomputed later (cheaply, through the prefix cache). A sequence that
alone cannot fit in the whole cache is finished with reason "length" instead: never a deadlock.

While any sequence is decoding, prompt tokens per step are capped (`max_prefill_tokens_when_decoding`),
so a long prompt joins in chunks instead of stalling every stream for one long step; with nothing
decoding a prompt gets the whole `max_num_batched_tokens` budget. On a GPU a step is padded up to
the next size of its CUDA graphs (`step_sizes`), so the cap grows to fill that size: the padding
rows' matmuls run anyway, and prompt tokens in their place add only their attention and KV blocks
(64 decodes and a 512-token cap make 576 tokens, padded to 640: 576 prompt tokens fit in the step).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from operator import attrgetter

from r1serve.engine.block_manager import BlockManager
from r1serve.engine.sequence import FinishReason, Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledChunk:
    seq: Sequence
    start: int  # == seq.num_computed_tokens when scheduled
    num_tokens: int


def sampled_rows(chunks: list[ScheduledChunk]) -> list[int]:
    """The indices of the chunks that reach their sequence's last token: their logits are sampled (a
    prompt chunk short of its end samples nothing). A loop over the step, not a property per chunk."""
    return [i for i, c in enumerate(chunks) if c.start + c.num_tokens == len(c.seq.token_ids)]


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_prefill_tokens_when_decoding: int = 0,
        step_sizes: tuple[int, ...] = (),
    ) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_prefill_tokens_when_decoding = max_prefill_tokens_when_decoding  # 0 = no cap
        self.step_sizes = sorted(step_sizes)  # ascending token counts a step is padded to
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        # Sequences the scheduler ended itself (no KV memory for a lone sequence); the engine reports them.
        self.finished: list[Sequence] = []
        self.num_preemptions = 0

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.finished)  # finished: still to report

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> bool:
        """Drop `seq` wherever it is and free its blocks at once; False if it had already finished."""
        if seq.is_finished:
            return False
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self._finish(seq, FinishReason.ABORT)
        return True

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End a running sequence, or a waiting one: preempted while its last token was being
        sampled (asynchronous scheduling), it ends as soon as that token says so."""
        (self.running if seq.status is SequenceStatus.RUNNING else self.waiting).remove(seq)
        self._finish(seq, reason)

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        self.block_manager.free_seq(seq)
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free_seq(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def schedule(self) -> list[ScheduledChunk]:
        bm, bs = self.block_manager, self.block_manager.block_size
        budget = self.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        skipped: list[Sequence] = []  # out of token budget this step: keep their blocks, compute next step
        # Decoding sequences first (one token each, latency-critical), then unfinished prefills.
        decodes: list[tuple[Sequence, int]] = []  # with its uncomputed tokens
        prefills: list[tuple[Sequence, int]] = []
        for seq in self.running:
            left = seq.num_uncomputed_tokens
            (prefills if left > 1 else decodes).append((seq, left))
        cap = self.max_prefill_tokens_when_decoding
        prefill_budget = min(self._filled_cap(len(decodes), cap), budget) if decodes and cap > 0 else budget
        pending = deque(decodes)
        pending.extend(prefills)
        preempted = False
        while pending:
            seq, left = pending.popleft()
            n = min(left, budget) if left <= 1 else min(left, budget, prefill_budget)
            if n == 0:
                skipped.append(seq)
                continue
            need = seq.num_computed_tokens + n
            if need > len(seq.block_table) * bs:  # else its blocks already hold the step (most decodes)
                while not bm.can_grow(seq, need):
                    preempted = True
                    if pending:
                        self._preempt(pending.pop()[0])
                    elif skipped:
                        self._preempt(skipped.pop())
                    else:
                        break
                if not bm.can_grow(seq, need):
                    if chunks:
                        self._preempt(seq)  # others hold blocks and will free them
                    else:
                        self._finish(seq, FinishReason.LENGTH)  # the whole cache cannot hold it
                        self.finished.append(seq)
                    continue
                bm.grow(seq, need)
            chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, n))
            budget -= n
            if left > 1:
                prefill_budget -= n
        # Preempted and finished sequences leave; the rest stay, oldest first.
        self.running = sorted(
            (s for s in self.running if s.status is SequenceStatus.RUNNING), key=attrgetter("seq_id")
        )

        while (
            self.waiting
            and not preempted
            and min(budget, prefill_budget) > 0
            and len(self.running) < self.max_num_seqs
        ):
            seq = self.waiting[0]
            # Keep one block spare while others run, so admitting cannot force an immediate preemption.
            if not bm.can_allocate(seq, reserve=1 if self.running else 0):
                break
            self.waiting.popleft()
            bm.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            n = min(seq.num_uncomputed_tokens, budget, prefill_budget)
            chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, n))
            self.running.append(seq)
            budget -= n
            prefill_budget -= n
        return chunks

    def _filled_cap(self, num_decodes: int, cap: int) -> int:
        """The prompt-token cap beside `num_decodes` decodes, grown to fill the step size the step
        would be padded to anyway (unchanged above the largest size: such a step runs unpadded)."""
        size = next((s for s in self.step_sizes if s >= num_decodes + cap), None)
        return cap if size is None else size - num_decodes

    def complete(self, *chunks: ScheduledChunk) -> None:
        """Account for computed chunks: their K/V is now in the cache (a sequence that has ended
        since its chunk was scheduled has nothing left to account)."""
        bm = self.block_manager
        bs = bm.block_size
        for chunk in chunks:
            seq = chunk.seq
            if seq.is_finished:
                continue
            seq.num_computed_tokens = done = chunk.start + chunk.num_tokens
            if done // bs > seq.num_hashed_blocks:  # a block just filled (1 decode step in block_size)
                bm.commit(seq)
