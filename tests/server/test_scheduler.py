"""Scheduler: admission under token/sequence/KV limits, chunked prefill, preemption, no deadlock."""

from r1serve.engine.block_manager import BlockManager
from r1serve.engine.scheduler import Scheduler, sampled_rows
from r1serve.engine.sequence import FinishReason, SamplingParams, Sequence, SequenceStatus

BS = 4


def make(
    num_blocks: int = 16, max_num_seqs: int = 8, budget: int = 64, prefill_cap: int = 0, step_sizes=()
) -> Scheduler:
    return Scheduler(
        BlockManager(num_blocks, BS),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=budget,
        max_prefill_tokens_when_decoding=prefill_cap,
        step_sizes=step_sizes,
    )


def seq(n: int, first: int = 0) -> Sequence:
    return Sequence(list(range(first, first + n)), SamplingParams(max_tokens=100))


def run_step(s: Scheduler, token: int = 1) -> list:
    """One engine step without a model: every chunk computed, every completed sequence gets `token`."""
    chunks = s.schedule()
    sampled = set(sampled_rows(chunks))
    for i, c in enumerate(chunks):
        s.complete(c)
        if i in sampled:
            c.seq.append_token(token)
    return chunks


def test_admits_up_to_max_num_seqs_then_batches_decodes() -> None:
    s = make(max_num_seqs=2)
    a, b, c = seq(3), seq(3, 10), seq(3, 20)
    for x in (a, b, c):
        s.add(x)
    chunks = run_step(s)
    assert [ch.seq for ch in chunks] == [a, b] and all(ch.num_tokens == 3 for ch in chunks)
    assert c.status is SequenceStatus.WAITING
    chunks = run_step(s)
    assert [(ch.seq, ch.num_tokens) for ch in chunks] == [(a, 1), (b, 1)]  # decode together


def test_token_budget_chunks_long_prompts() -> None:
    s = make(budget=8)
    long = seq(20)
    s.add(long)
    sizes = []
    while long.num_output_tokens == 0:
        sizes.append(sum(ch.num_tokens for ch in run_step(s)))
    assert sizes == [8, 8, 4]
    assert long.num_computed_tokens == 20


def test_decodes_go_first_and_a_new_prompt_gets_the_rest_of_the_budget() -> None:
    s = make(budget=8)
    a = seq(4)
    s.add(a)
    run_step(s)
    b = seq(12, 100)
    s.add(b)
    chunks = run_step(s)
    assert [(ch.seq, ch.num_tokens) for ch in chunks] == [(a, 1), (b, 7)]


def test_prompt_tokens_are_capped_while_a_sequence_decodes() -> None:
    s = make(num_blocks=32, budget=64, prefill_cap=8)
    a = seq(4)
    s.add(a)
    run_step(s)  # a decodes from now on
    long, short = seq(30, 100), seq(5, 200)
    s.add(long)
    s.add(short)
    steps = []
    while long.num_output_tokens == 0 or short.num_output_tokens == 0:
        chunks = run_step(s)
        assert (chunks[0].seq, chunks[0].num_tokens) == (a, 1)  # the decode never waits
        steps.append([(ch.seq, ch.num_tokens) for ch in chunks[1:]])
    # 8 prompt tokens a step however much of the 64-token budget is left; the short prompt waits its turn.
    assert steps == [[(long, 8)], [(long, 8)], [(long, 8)], [(long, 6), (short, 2)], [(long, 1), (short, 3)]]


def test_the_prompt_cap_grows_to_fill_the_step_size_it_is_padded_to() -> None:
    # one decode + a cap of 8 = 9 tokens, padded to a 12-token graph: 11 prompt tokens fit instead
    s = make(num_blocks=32, budget=64, prefill_cap=8, step_sizes=(4, 12, 16))
    a = seq(4)
    s.add(a)
    run_step(s)
    long = seq(30, 100)
    s.add(long)
    sizes = []
    while long.num_output_tokens == 0:
        chunks = run_step(s)
        assert (chunks[0].seq, chunks[0].num_tokens) == (a, 1)
        sizes.append(sum(ch.num_tokens for ch in chunks))
    assert sizes == [12, 12, 9]  # 11 + 11 + 8 prompt tokens beside the decode
    # above the largest size a step is not padded: the cap stays as set
    s = make(num_blocks=32, budget=64, prefill_cap=20, step_sizes=(4, 12, 16))
    s.add(seq(4))
    run_step(s)
    s.add(seq(30, 100))
    assert sum(ch.num_tokens for ch in run_step(s)) == 1 + 20
    # the step's total budget still bounds it
    s = make(num_blocks=32, budget=10, prefill_cap=8, step_sizes=(12,))
    s.add(seq(4))
    run_step(s)
    s.add(seq(30, 100))
    assert sum(ch.num_tokens for ch in run_step(s)) == 10


def test_prompts_get_the_whole_budget_when_nothing_decodes() -> None:
    s = make(num_blocks=32, budget=64, prefill_cap=8)
    a, b = seq(30), seq(20, 100)
    s.add(a)
    s.add(b)
    assert [(ch.seq, ch.num_tokens) for ch in run_step(s)] == [(a, 30), (b, 20)]


def test_preemption_frees_the_newest_and_requeues_it_first() -> None:
    s = make(num_blocks=5, budget=64)
    a, b = seq(8), seq(7, 50)  # 2 blocks each; one block stays spare at admission
    s.add(a)
    s.add(b)
    run_step(s)
    assert s.block_manager.num_free_blocks == 1
    assert len(run_step(s)) == 2  # a takes the spare block for its 9th token, b fills its 2nd block
    assert s.block_manager.num_free_blocks == 0
    chunks = run_step(s)  # b needs a 3rd block: there is none, so b (the newest) is preempted
    assert [ch.seq for ch in chunks] == [a]
    assert b.status is SequenceStatus.WAITING and s.waiting[0] is b and b.block_table == []
    assert b.num_preemptions == 1
    s.finish(a, FinishReason.STOP)  # a finishes: b comes back and recomputes its tokens
    chunks = run_step(s)
    assert [ch.seq for ch in chunks] == [b]
    assert chunks[0].start + chunks[0].num_tokens == 9


def test_lone_sequence_larger_than_the_cache_finishes_instead_of_deadlocking() -> None:
    s = make(num_blocks=2, budget=64)
    a = seq(8)
    s.add(a)
    run_step(s)
    chunks = run_step(s)  # needs a 3rd block that does not exist
    assert chunks == [] and a.finish_reason is FinishReason.LENGTH
    assert s.finished == [a] and s.block_manager.num_free_blocks == 2
    assert s.has_work()  # until the engine has reported its end
    s.finished.clear()
    assert not s.has_work()


def test_admission_waits_for_free_blocks() -> None:
    s = make(num_blocks=3, budget=64)
    a, b = seq(8), seq(8, 40)
    s.add(a)
    s.add(b)
    chunks = run_step(s)
    assert [ch.seq for ch in chunks] == [a] and b.status is SequenceStatus.WAITING
    s.finish(a, FinishReason.STOP)
    assert [ch.seq for ch in run_step(s)] == [b]


def test_abort_frees_blocks_at_once_wherever_the_sequence_is() -> None:
    s = make(max_num_seqs=1)
    a, b = seq(5), seq(5, 9)
    s.add(a)
    s.add(b)
    run_step(s)
    assert s.abort(a) and s.abort(b)
    assert s.block_manager.num_free_blocks == 16 and not s.has_work()
    assert a.finish_reason is b.finish_reason is FinishReason.ABORT
    assert not s.abort(a)
