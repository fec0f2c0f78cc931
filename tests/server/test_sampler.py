"""Sampler on plain tensors: greedy, top-k/top-p, per-request seeds, penalties."""

import pytest
import torch
from r1serve.engine.sampler import Sampler
from r1serve.engine.sequence import SamplingParams

sample = Sampler()


def logits(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_temperature_zero_is_argmax() -> None:
    p = SamplingParams(temperature=0.0)
    assert sample(logits([0.1, 3.0, 0.2], [5.0, 0.0, 1.0]), [p, p], [[], []], [None, None]) == [1, 0]


def test_top_k_one_is_greedy_even_when_hot() -> None:
    p = SamplingParams(temperature=2.0, top_k=1)
    row = [0.0, 1.0, 0.9, 0.8]
    assert all(sample(logits(row), [p], [[]], [None]) == [1] for _ in range(20))


def test_top_k_and_top_p_restrict_the_candidates() -> None:
    row = [4.0, 3.9, 0.0, -1.0, -2.0]
    k2 = SamplingParams(temperature=1.0, top_k=2)
    assert {sample(logits(row), [k2], [[]], [None])[0] for _ in range(200)} == {0, 1}
    # top_p: token 0 alone has ~52% of the mass, so 0.5 keeps only it.
    p = SamplingParams(temperature=1.0, top_p=0.5)
    assert {sample(logits(row), [p], [[]], [None])[0] for _ in range(100)} == {0}


def test_seed_reproducible_whatever_the_batch() -> None:
    torch.manual_seed(1)
    row = torch.randn(1000).tolist()
    p = SamplingParams(temperature=1.0, seed=42)
    alone = [sample(logits(row), [p], [[]], [g])[0] for g in [gen(42)] for _ in range(5)]
    g = gen(42)
    other = SamplingParams(temperature=1.0)
    batched = [sample(logits(row, row), [p, other], [[], []], [g, None])[0] for _ in range(5)]
    assert alone == batched
    assert len(set(alone)) > 1  # really sampling, not greedy


def test_different_seeds_differ() -> None:
    torch.manual_seed(2)
    row = torch.randn(1000).tolist()
    p = SamplingParams(temperature=1.0)
    a = [sample(logits(row), [p], [[]], [g])[0] for g in [gen(1)] for _ in range(8)]
    b = [sample(logits(row), [p], [[]], [g])[0] for g in [gen(2)] for _ in range(8)]
    assert a != b


def test_frequency_penalty_counts_repeats_presence_does_not() -> None:
    row = [2.0, 1.0, 0.0]
    freq = SamplingParams(temperature=0.0, frequency_penalty=0.6)
    assert sample(logits(row), [freq], [[0]], [None]) == [0]  # 2.0 - 0.6 > 1.0
    assert sample(logits(row), [freq], [[0, 0]], [None]) == [1]  # 2.0 - 1.2 < 1.0
    presence = SamplingParams(temperature=0.0, presence_penalty=1.5)
    assert sample(logits(row), [presence], [[0, 0, 0]], [None]) == [1]  # 2.0 - 1.5 < 1.0
    assert sample(logits(row), [presence], [[2, 2, 2, 2]], [None]) == [0]


def test_negative_penalty_encourages_repeats() -> None:
    p = SamplingParams(temperature=0.0, presence_penalty=-2.0)
    assert sample(logits([1.0, 0.0]), [p], [[1]], [None]) == [1]


def test_penalties_count_each_rows_own_tokens_in_a_batch() -> None:
    row = [2.0, 1.0, 0.0]
    freq = SamplingParams(temperature=0.0, frequency_penalty=0.6)
    plain = SamplingParams(temperature=0.0)
    presence = SamplingParams(temperature=0.0, presence_penalty=1.5)
    batch = logits(row, row, row, row)
    params = [freq, plain, presence, presence]
    outputs = [[0, 0], [0, 0, 0], [], [2, 0]]
    assert sample(batch, params, outputs, [None] * 4) == [1, 0, 0, 1]


def test_greedy_rows_stay_argmax_beside_sampled_rows() -> None:
    torch.manual_seed(3)
    rows = torch.randn(4, 1000)
    rows[3] = rows[1]
    hot = SamplingParams(temperature=1.5, top_p=0.9, top_k=50)
    greedy = SamplingParams(temperature=0.0)
    for _ in range(5):
        out = sample(rows.clone(), [hot, greedy, hot, greedy], [[]] * 4, [None] * 4)
        assert out[1] == out[3] == int(rows[1].argmax()) == int(rows[3].argmax())


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MIXED = [
    SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=0.3),
    SamplingParams(temperature=0.6, top_p=0.95),
    SamplingParams(temperature=1.0, top_k=20, presence_penalty=1.0),
    SamplingParams(temperature=0.8, seed=7),
    SamplingParams(temperature=0.0),
]


@needs_cuda
def test_gpu_sampling_queues_its_work_without_a_host_sync() -> None:
    """The step's one sync is the engine's .tolist(): sample() itself must never wait for the GPU."""
    logits = torch.randn(len(MIXED), 151936, device="cuda")
    outputs = [[1, 2, 2], [], [5, 9], [7], []]
    generators = [None, None, None, torch.Generator("cuda").manual_seed(7), None]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tokens = Sampler().sample(logits, MIXED, outputs, generators)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert tokens.device.type == "cuda"
    assert all(0 <= t < 151936 for t in tokens.tolist())


@needs_cuda
def test_gpu_and_cpu_agree_on_greedy_rows_with_penalties() -> None:
    torch.manual_seed(4)
    rows = torch.randn(len(MIXED), 1000)
    outputs = [[int(rows[i].argmax())] * 3 for i in range(len(MIXED))]
    greedy = [SamplingParams(temperature=0.0, frequency_penalty=p.frequency_penalty,
                             presence_penalty=p.presence_penalty) for p in MIXED]  # fmt: skip
    none = [None] * len(MIXED)
    assert sample(rows.cuda(), greedy, outputs, none) == sample(rows.clone(), greedy, outputs, none)


def test_warmup_takes_every_sampling_path_at_each_batch_size(monkeypatch) -> None:
    """Start-up runs each path a request can take (its kernels load on first use on CUDA), at the
    batch sizes it is given (build_engine: 1 and max_num_seqs on a GPU)."""
    from r1serve.engine import sampler as module

    seen: dict[str, list] = {"penalties": [], "top_k_top_p": [], "sampled": []}

    def spy(name, fn, record):
        def wrapped(*args, **kwargs):
            seen[name].append(record(*args))
            return fn(*args, **kwargs)

        return wrapped

    def batch(logits, *_):
        return len(logits)

    monkeypatch.setattr(module, "apply_penalties", spy("penalties", module.apply_penalties, batch))
    monkeypatch.setattr(module, "top_k_top_p_mask", spy("top_k_top_p", module.top_k_top_p_mask, batch))
    monkeypatch.setattr(
        Sampler,
        "sample",
        spy("sampled", Sampler.sample, lambda _, logits, params, *__: (len(logits), params[0])),
    )
    Sampler().warmup(vocab_size=50, device=torch.device("cpu"), batch_sizes=(1, 6))
    assert seen["penalties"] == [1, 6]
    assert seen["top_k_top_p"] == [1, 1, 6, 6]  # top-p alone, then top-k with penalties
    assert {params.greedy for _, params in seen["sampled"]} == {True, False}
    assert {size for size, _ in seen["sampled"]} == {1, 6}
    assert any(params.seed is not None for _, params in seen["sampled"])


def test_start_up_warms_the_sampler_and_a_failure_there_is_a_start_error(tiny_model_dir, monkeypatch) -> None:
    """build_engine warms the sampler (on the CPU at one row) inside the start-up errors' handling, so
    that a failure there (on a GPU: out of memory at max_num_seqs rows) ends start-up with its reason."""
    from r1serve.config import Settings
    from r1serve.engine import loader

    settings = Settings(model=tiny_model_dir, device="cpu", dtype="float32", max_num_seqs=8)
    calls = []
    monkeypatch.setattr(
        Sampler, "warmup", lambda _, vocab, device, sizes: calls.append((vocab, device.type, sizes))
    )
    runner, _ = loader.build_engine(settings)
    runner.close()
    assert calls == [(runner.config.vocab_size, "cpu", [1])]

    def out_of_memory(*_):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(Sampler, "warmup", out_of_memory)
    with pytest.raises(loader.EngineStartError, match="RuntimeError: CUDA out of memory"):
        loader.build_engine(settings)


def test_top_k_past_the_vocabulary_keeps_every_token_and_fails_no_row() -> None:
    """A top_k past float32's range (10**309 from a client) once raised inside the engine's step and
    failed every running request; a top_k past the vocabulary is no restriction."""
    row = [1.0, 1.0, 1.0, 1.0]
    huge, greedy = SamplingParams(temperature=1.0, top_k=10**309), SamplingParams(temperature=0.0)
    seen = {
        sample(logits(row, [0.0, 2.0, 0.0, 0.0]), [huge, greedy], [[], []], [None, None])[0]
        for _ in range(60)
    }
    assert seen == {0, 1, 2, 3}
    assert sample(logits(row, [0.0, 2.0, 0.0, 0.0]), [huge, greedy], [[], []], [None, None])[1] == 1


@pytest.mark.parametrize(
    "params", [SamplingParams(temperature=1e-40), SamplingParams(temperature=1.0, top_p=1e-46)]
)
def test_vanishing_temperature_or_top_p_is_greedy(params: SamplingParams) -> None:
    """Both round to 0 in float32: sampled, every probability would be NaN and the token always 0."""
    assert params.greedy
    assert sample(logits([0.5, 0.1, 3.0], [0.2, 4.0, 0.1]), [params, params], [[], []], [None, None]) == [
        2,
        1,
    ]
