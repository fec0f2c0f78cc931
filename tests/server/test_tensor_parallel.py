"""Tensor parallel: a model split over two ranks computes what the whole model computes, and the
worker processes fail loudly and never outlive the server.

On the CPU the ranks are two processes joined by gloo (float32, so the split sums differ from the
whole ones only by float32 rounding). The last tests run on two GPUs over NCCL with CUDA graphs and
are skipped elsewhere.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from r1serve.checkpoint import load_config
from r1serve.config import Settings
from r1serve.engine.llm_engine import LLMEngine
from r1serve.engine.sequence import SamplingParams, Sequence
from r1serve.model.loader import load_model
from r1serve.model.parallel import TensorParallel
from r1serve.model_runner import ModelRunner, ScheduledSeq
from r1serve.tp_worker import TensorParallelError
from safetensors.torch import load_file

CPU = dict(
    device="cpu", dtype="float32", block_size=8, max_model_len=256, kv_cache_memory=2**20, progress=False
)
# the failure tests also run over NCCL where there are two GPUs (CUDA graphs captured, bf16)
FAILURE_SETTINGS = [CPU] + (
    [CPU | dict(device="cuda", dtype="bfloat16", max_num_seqs=8)] if torch.cuda.device_count() >= 2 else []
)


def greedy(
    runner: ModelRunner, prompts: list[list[int]], steps: int
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """All prompts prefilled in one step, then decoded together `steps` times: the tokens, and the
    logits of every step."""
    per_seq = -(-(max(map(len, prompts)) + steps) // runner.block_size)
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(len(prompts))]
    logits = runner.run([ScheduledSeq(p, 0, t) for p, t in zip(prompts, tables, strict=True)]).cpu()
    history, tokens = [logits], [[] for _ in prompts]
    for _ in range(steps):
        for out, row in zip(tokens, logits, strict=True):
            out.append(int(row.argmax()))
        batch = [
            ScheduledSeq([out[-1]], len(p) + len(out) - 1, t)
            for p, out, t in zip(prompts, tokens, tables, strict=True)
        ]
        logits = runner.run(batch).cpu()
        history.append(logits)
    return tokens, history


def greedy_on_both(
    one: ModelRunner, two: ModelRunner, prompts: list[list[int]], steps: int
) -> tuple[tuple[list[list[int]], list[torch.Tensor]], tuple[list[list[int]], list[torch.Tensor]]]:
    """`greedy` on the one-rank and then the two-rank runner; closes the two-rank one."""
    try:
        return greedy(one, prompts, steps), greedy(two, prompts, steps)
    finally:
        two.close()


def prompts(vocab: int, lengths: tuple[int, ...] = (3, 17, 40)) -> list[list[int]]:
    gen = torch.Generator().manual_seed(sum(lengths))
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]


@pytest.fixture(scope="class")
def runners(tiny_model_dir: Path) -> Iterator[tuple[ModelRunner, ModelRunner]]:
    """The tiny model (4 query heads, 2 KV heads, QKV biases, untied LM head) whole and over 2 ranks."""
    one = ModelRunner(tiny_model_dir, **CPU)
    two = ModelRunner(tiny_model_dir, tensor_parallel_size=2, **CPU)
    yield one, two
    two.close()


class TestTinyModelOverTwoRanks:
    """These share one TP=2 runner (class scope): a process holds one tensor-parallel group at a
    time, so it is closed before the tests below start theirs."""

    def test_each_rank_holds_its_share(self, runners: tuple[ModelRunner, ModelRunner]) -> None:
        one, two = runners
        attn = two.model.model.layers[0].self_attn
        assert (attn.num_heads, attn.num_kv_heads) == (2, 1)
        # its KV cache holds only its own KV head: half the bytes a block, twice the blocks per budget
        assert two.block_bytes * 2 == one.block_bytes
        assert two.num_blocks == 2 * one.num_blocks
        assert two.kv_cache.shape[-2] == 1

    def test_logits_and_greedy_tokens_match_one_rank(self, runners: tuple[ModelRunner, ModelRunner]) -> None:
        one, two = runners
        batch = prompts(one.config.vocab_size)
        tokens_1, logits_1 = greedy(one, batch, steps=32)
        tokens_2, logits_2 = greedy(two, batch, steps=32)
        assert tokens_2 == tokens_1
        for step, (a, b) in enumerate(zip(logits_1, logits_2, strict=True)):
            assert b.shape == a.shape == (3, one.config.vocab_size)
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m, s=step: f"step {s}: {m}")

    def test_engine_output_matches_one_rank(self, runners: tuple[ModelRunner, ModelRunner]) -> None:
        """Through the engine: chunked prefills (a 16-token step budget) share steps with decodes."""
        outputs = []
        for runner in runners:
            engine = LLMEngine(runner, max_num_seqs=4, max_num_batched_tokens=16)
            params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
            seqs = [Sequence(p, params) for p in prompts(runner.config.vocab_size, (5, 23, 41))]
            for s in seqs:
                engine.add(s)
            while engine.has_work():
                engine.step()
            outputs.append([s.output_token_ids for s in seqs])
        assert outputs[1] == outputs[0]
        assert all(len(out) == 24 for out in outputs[0])


def _hf_checkpoint(out: Path, tiny_model_dir: Path, *, tied: bool) -> Path:
    """A random Qwen2 checkpoint whose vocabulary (255) two ranks cannot split evenly."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=255, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=tied,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():  # wide weights: greedy choices far from ties
            param.uniform_(0.5, 1.5) if "norm" in name else param.normal_(0.0, 0.15)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, out / name)
    return out


def test_loaded_shards_are_the_checkpoints_slices(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Rank r's parameters are rows (or, for o_proj / down_proj, columns) r of each checkpoint tensor;
    the vocabulary's padding row is zero. Loading needs no process group, so both ranks load here."""
    model_dir = _hf_checkpoint(tmp_path, tiny_model_dir, tied=False)
    config = load_config(model_dir)
    ckpt = load_file(model_dir / "model.safetensors")
    cpu = torch.device("cpu")
    for rank in (0, 1):
        model = load_model(model_dir, config, cpu, torch.float32, progress=False, tp=TensorParallel(rank, 2))
        shard = dict(model.named_parameters())
        p = "model.layers.1."
        q, kv = slice(rank * 32, rank * 32 + 32), slice(rank * 16, rank * 16 + 16)
        expected_qkv = [ckpt[p + f"self_attn.{x}_proj.bias"][s] for x, s in (("q", q), ("k", kv), ("v", kv))]
        torch.testing.assert_close(shard[p + "self_attn.qkv_proj.bias"], torch.cat(expected_qkv))
        up = slice(rank * 48, rank * 48 + 48)
        expected_gate_up = torch.cat(
            [ckpt[p + "mlp.gate_proj.weight"][up], ckpt[p + "mlp.up_proj.weight"][up]]
        )
        torch.testing.assert_close(shard[p + "mlp.gate_up_proj.weight"], expected_gate_up)
        torch.testing.assert_close(
            shard[p + "self_attn.o_proj.weight"], ckpt[p + "self_attn.o_proj.weight"][:, q]
        )
        torch.testing.assert_close(shard[p + "mlp.down_proj.weight"], ckpt[p + "mlp.down_proj.weight"][:, up])
        torch.testing.assert_close(shard["model.embed_tokens.weight"], ckpt["model.embed_tokens.weight"])
        head = shard["lm_head.weight"]
        assert head.shape == (128, 64)
        real = ckpt["lm_head.weight"][rank * 128 : rank * 128 + 128]
        torch.testing.assert_close(head[: len(real)], real)
        assert not head[len(real) :].any()


def test_tied_embeddings_and_an_uneven_vocabulary(tmp_path: Path, tiny_model_dir: Path) -> None:
    model_dir = _hf_checkpoint(tmp_path, tiny_model_dir, tied=True)
    one = ModelRunner(model_dir, **CPU)
    two = ModelRunner(model_dir, tensor_parallel_size=2, **CPU)
    (tokens_1, logits_1), (tokens_2, logits_2) = greedy_on_both(one, two, prompts(255, (1, 9, 30)), 12)
    assert tokens_2 == tokens_1
    for a, b in zip(logits_1, logits_2, strict=True):
        assert b.shape == (3, 255)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (3, "num_attention_heads 4 is not divisible by tensor_parallel_size 3"),
        (4, "num_key_value_heads 2 is not divisible by tensor_parallel_size 4"),
        (0, "tensor_parallel_size must be positive"),
    ],
)
def test_a_split_that_does_not_divide_fails_before_any_process_starts(
    tiny_model_dir: Path, size: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ModelRunner(tiny_model_dir, tensor_parallel_size=size, **CPU)
    assert multiprocessing.active_children() == []


def test_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(model=Path("/m")).tensor_parallel_size == 1
    monkeypatch.setenv("R1SERVE_TENSOR_PARALLEL_SIZE", "2")
    assert Settings(model=Path("/m")).tensor_parallel_size == 2
    with pytest.raises(ValidationError):
        Settings(model=Path("/m"), tensor_parallel_size=0)


def _kill_worker_once_started(stop: threading.Event) -> None:
    while not stop.is_set():
        for child in multiprocessing.active_children():
            if child.name == "r1serve-tp1":
                child.kill()
                return
        time.sleep(0.01)


@pytest.mark.parametrize("settings", FAILURE_SETTINGS, ids=lambda s: s["device"])
def test_a_worker_dying_at_start_up_is_reported(tiny_model_dir: Path, settings: dict) -> None:
    stop = threading.Event()
    killer = threading.Thread(target=_kill_worker_once_started, args=(stop,))
    killer.start()
    try:  # reported, not waited out at a collective (which would hang until pytest's timeout)
        with pytest.raises(TensorParallelError, match=r"rank 1 (failed to start|died): exited with signal 9"):
            ModelRunner(tiny_model_dir, tensor_parallel_size=2, **settings)
    finally:
        stop.set()
        killer.join()
    assert multiprocessing.active_children() == []


STEP = [ScheduledSeq([5, 6, 7], 0, [0])]


def serve_then_kill_the_worker(runner: ModelRunner) -> list[str]:
    """One step on both ranks, then rank 1's process killed (no clean-up of its own runs); returns the
    list the runner's `on_failure` reports into."""
    failures: list[str] = []
    runner.on_failure(failures.append)
    runner.run(STEP)
    (worker,) = multiprocessing.active_children()
    worker.kill()
    worker.join()
    return failures


@pytest.mark.parametrize("settings", FAILURE_SETTINGS, ids=lambda s: s["device"])
@pytest.mark.timeout(120, method="thread")  # its CUDA case once hung inside NCCL, beyond any signal
def test_a_worker_dying_while_serving_fails_every_later_step(tiny_model_dir: Path, settings: dict) -> None:
    runner = ModelRunner(tiny_model_dir, tensor_parallel_size=2, **settings)
    try:
        failures = serve_then_kill_the_worker(runner)
        for _ in range(2):
            with pytest.raises(TensorParallelError, match="rank 1 died: exited with signal 9"):
                runner.run(STEP)
    finally:
        runner.close()
    assert failures and "rank 1 died" in failures[0]
    assert multiprocessing.active_children() == []


def test_an_abort_that_never_returns_blocks_neither_the_failure_nor_close(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """NCCL's abort can hang (pytorch#115388, seen on two H200s); gloo's cannot, so on the CPU a stand-in
    abort that blocks until released takes its place. The death is still reported, later steps still
    fail at once, `close` waits for the abort only ABORT_SECONDS and runs no second one, and the worker
    processes still end."""
    import r1serve.tp_worker as tp_worker

    release, aborts = threading.Event(), []
    real_destroy = tp_worker.destroy_process_group

    def hanging_abort(abort: bool = False) -> None:
        aborts.append(abort)
        if abort:
            release.wait(60)
        real_destroy()

    monkeypatch.setattr(tp_worker, "destroy_process_group", hanging_abort)
    monkeypatch.setattr(tp_worker, "ABORT_SECONDS", 0.5)
    runner = ModelRunner(tiny_model_dir, tensor_parallel_size=2, **CPU)
    workers = runner._workers
    workers._abort_on_failure = True  # as on CUDA
    try:
        failures = serve_then_kill_the_worker(runner)
        with pytest.raises(TensorParallelError, match="rank 1 died"):
            runner.run(STEP)
        deadline = time.monotonic() + 10  # the monitor thread may be the one reporting: a bound, not a timing
        while not failures and time.monotonic() < deadline:
            time.sleep(0.01)
        assert failures and "rank 1 died" in failures[0]  # reported while the abort still hangs
        runner.close()
        assert aborts == [True]  # close ran no second abort
        assert "NCCL abort after the failure has not returned" in caplog.text
        assert multiprocessing.active_children() == []
    finally:
        release.set()  # the stand-in abort ends, leaving the gloo group, so later tests can form theirs
        runner.close()
        if workers._abort is not None:
            workers._abort.join(30)
        assert not torch.distributed.is_initialized()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie no one has reaped yet is gone too


def _start_rank0(tiny_model_dir: Path, tmp_path: Path, ignore_signals: bool) -> tuple[subprocess.Popen, int]:
    """A process holding a TP=2 runner (as an engine process does: ignoring SIGINT/SIGTERM, if asked),
    and the pid of its worker."""
    script = tmp_path / "serve.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import multiprocessing, signal, sys, time
            from r1serve.model_runner import ModelRunner

            if __name__ == "__main__":
                if {ignore_signals!r}:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                runner = ModelRunner(sys.argv[1], tensor_parallel_size=2, **{CPU!r})
                print(*[p.pid for p in multiprocessing.active_children()], flush=True)
                time.sleep(300)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen(
        [sys.executable, str(script), str(tiny_model_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    line = server.stdout.readline()
    workers = [int(pid) for pid in line.split()]
    assert len(workers) == 1, line
    assert _alive(workers[0])
    return server, workers[0]


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 20  # a bound for a hang, not a measurement
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def test_workers_exit_when_the_server_process_is_killed(tiny_model_dir: Path, tmp_path: Path) -> None:
    server, worker = _start_rank0(tiny_model_dir, tmp_path, ignore_signals=False)
    try:
        server.send_signal(signal.SIGKILL)  # no clean-up code runs
        server.wait()
        assert _gone(worker), "the worker outlived the server process"
    finally:
        server.kill()


def test_a_worker_of_an_engine_process_still_ends_on_sigterm(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A spawn child inherits ignored signals; multiprocessing ends daemon workers with SIGTERM at rank
    0's exit, which must not be ignored (rank 0's exit would wait for the worker forever). SIGINT is
    ignored: a Ctrl-C reaches the whole process group, and rank 0 stops the workers after the drain."""
    server, worker = _start_rank0(tiny_model_dir, tmp_path, ignore_signals=True)
    try:
        os.kill(worker, signal.SIGINT)
        time.sleep(0.5)
        assert _alive(worker)
        os.kill(worker, signal.SIGTERM)
        assert _gone(worker), "SIGTERM did not end the worker"
    finally:
        server.kill()


# -- two GPUs ------------------------------------------------------------------------------------------

two_gpus = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"
)


@pytest.fixture(scope="module")
def shape_1p5b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeepSeek-R1-Distill-Qwen-1.5B's shape (12 query heads, 2 KV heads, 151,936 vocabulary) with
    random weights and 4 of its 28 layers."""
    from bench.shapes import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("1p5b"), "1.5b", num_hidden_layers=4)


GPU = dict(device="cuda", block_size=16, max_model_len=512, max_num_seqs=8, progress=False)


@two_gpus
def test_two_gpus_greedy_tokens_match_one_in_float32(shape_1p5b: Path) -> None:
    """64 greedy tokens for 3 prompts, token for token, with CUDA graphs (NCCL all-reduce captured).

    In float32: two ranks add the two halves of every o_proj / down_proj product after rounding each
    (NCCL), one rank sums all of it inside one GEMM, so the results differ by rounding. In float32
    that is ~1e-6 relative, far below the gap between a random model's top two logits; in bf16 it
    is ~1e-2 and flips near-tied greedy choices, so bf16 is compared by logits below. The TP=2
    runner sizes its KV cache automatically: rank 0 shares its GPU with the TP=1 runner, rank 1
    does not, so the ranks' budgets differ and must agree on the smaller block count."""
    one = ModelRunner(shape_1p5b, dtype="float32", kv_cache_memory=2**30, **GPU)
    two = ModelRunner(shape_1p5b, dtype="float32", tensor_parallel_size=2, gpu_memory_utilization=0.5, **GPU)
    assert two.graphs is not None and two.num_blocks * two.block_size >= two.max_model_len
    batch = prompts(one.config.vocab_size, (5, 40, 129))
    (tokens_1, logits_1), (tokens_2, logits_2) = greedy_on_both(one, two, batch, 64)
    assert tokens_2 == tokens_1
    for a, b in zip(logits_1, logits_2, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)


@two_gpus
def test_two_gpus_bf16_logits_match_one(shape_1p5b: Path) -> None:
    one = ModelRunner(shape_1p5b, kv_cache_memory=2**30, **GPU)
    two = ModelRunner(shape_1p5b, kv_cache_memory=2**30, tensor_parallel_size=2, **GPU)
    assert one.dtype == two.dtype == torch.bfloat16
    batch = prompts(one.config.vocab_size, (5, 40, 129))
    (tokens_1, logits_1), (tokens_2, logits_2) = greedy_on_both(one, two, batch, 16)
    # the prefill (same inputs on both) differs by bf16 rounding of the split sums only; bf16 keeps 8
    # bits of mantissa, so compare relative to the logits' size (as test_model_parity's bf16 test does)
    err = float((logits_2[0] - logits_1[0]).abs().max())
    scale = float(logits_1[0].abs().max())
    print(
        f"bf16 prefill max |logit diff| {err:.4f} of {scale:.2f}; greedy tokens equal: {tokens_2 == tokens_1}"
    )
    assert err <= 0.05 * scale


# Last in the file and bounded by a thread timeout (which ends the whole pytest process): if a step
# already inside a NCCL collective never returns when its peer dies, this hangs in C where no Python
# signal handler runs, and it must not keep the equality tests above from running (it did once).
@two_gpus
@pytest.mark.timeout(180, method="thread")
def test_two_gpus_a_worker_killed_during_a_long_prefill_fails_the_step(shape_1p5b: Path) -> None:
    """Rank 1 dies while the ranks are inside a step (4k-token prefills of a 4k-context model): the
    step NCCL was waiting in must end in an error rather than hang (pytest's timeout bounds a hang):
    the failed launch raises TensorParallelError, or the wait for its result (outside `run`, as the
    engine's sampled-token sync is) a NCCL/CUDA error; every later step raises TensorParallelError."""
    settings = GPU | dict(dtype="bfloat16", max_model_len=4096, kv_cache_memory=2**30)
    runner = ModelRunner(shape_1p5b, tensor_parallel_size=2, **settings)
    failures: list[str] = []
    runner.on_failure(failures.append)
    prompt = prompts(runner.config.vocab_size, (4000,))[0]
    step = [ScheduledSeq(prompt, 0, list(range(-(-4001 // runner.block_size))))]
    (worker,) = multiprocessing.active_children()
    try:
        runner.run(step).cpu()  # warm: the kill lands in the steps below, not in a compilation
        threading.Timer(0.002, worker.kill).start()
        with pytest.raises(RuntimeError):  # TensorParallelError is one
            for _ in range(200):  # ~ms each: the kill lands inside one of them, or between two
                runner.run(step).cpu()
        with pytest.raises(TensorParallelError, match="rank 1 died"):
            runner.run(step)
    finally:
        runner.close()
    assert failures and "rank 1" in failures[0]
    assert multiprocessing.active_children() == []
