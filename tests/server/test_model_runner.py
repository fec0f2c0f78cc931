"""ModelRunner contract on the tiny checkpoint (CPU): shapes, cache sizing, batching, bad input."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from r1serve.model_runner import ModelRunner, ScheduledSeq


@pytest.fixture(scope="module")
def runner(tiny_model_dir: Path) -> ModelRunner:
    return ModelRunner(tiny_model_dir, device="cpu", kv_cache_memory=4 * 2**20, block_size=16, progress=False)


def test_loads_tiny_checkpoint(runner: ModelRunner) -> None:
    assert runner.device == torch.device("cpu")
    assert runner.dtype == torch.float32
    assert runner.config.architecture == "qwen2"
    assert runner.max_model_len == runner.config.max_position_embeddings == 4096
    assert runner.generation_defaults.temperature == 0.6
    assert runner.generation_defaults.top_p == 0.95
    assert runner.generation_defaults.eos_token_ids == (runner.tokenizer.eos_token_id,)
    # 2 (K,V) x 2 layers x 16 tokens x 2 kv heads x 16 dims x 4 bytes = 8 KiB per block
    assert runner.block_bytes == 8192
    assert runner.num_blocks == 4 * 2**20 // 8192
    assert runner.kv_cache_bytes == runner.num_blocks * runner.block_bytes


def test_batch_equals_sequences_run_alone(runner: ModelRunner) -> None:
    """Mixed prefill + decode in one ragged batch gives the same logits as each sequence alone."""
    runner.warmup()
    a = list(range(5, 40))  # 35 tokens: crosses two block boundaries
    b = list(range(100, 107))
    alone_a = runner.run([ScheduledSeq(a, 0, [10, 11, 12])])
    alone_b = runner.run([ScheduledSeq(b, 0, [20])])
    # decode one token of `a` (its prompt is cached in blocks 10-12) next to a fresh prefill of `b`
    step = runner.run([ScheduledSeq([7], len(a), [10, 11, 12]), ScheduledSeq(b, 0, [21])])
    assert step.shape == (2, runner.config.vocab_size)
    assert step.dtype == torch.float32
    torch.testing.assert_close(step[1], alone_b[0])
    full_a = runner.run([ScheduledSeq([*a, 7], 0, [30, 31, 32])])
    torch.testing.assert_close(step[0], full_a[0])
    assert not torch.equal(alone_a[0], step[0])


@pytest.mark.parametrize(
    ("seq", "message"),
    [
        (ScheduledSeq([], 0, [0]), "at least one token"),
        (ScheduledSeq([1] * 17, 0, [0]), "cannot hold 17 tokens"),
        (ScheduledSeq([1], 4096, [0] * 257), "exceed max_model_len"),
        (ScheduledSeq([1], 0, [10**6]), "block ids must be in"),
        (ScheduledSeq([1, 10**6], 0, [0]), "token ids must be in"),
        (ScheduledSeq([-1], 0, [0]), "token ids must be in"),
    ],
)
def test_bad_batch_is_rejected(runner: ModelRunner, seq: ScheduledSeq, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        runner.run([seq])


def test_kv_cache_too_small_for_max_model_len(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="needs 256"):
        ModelRunner(tiny_model_dir, device="cpu", kv_cache_memory=64 * 8192, progress=False)


def test_bad_settings(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="invalid dtype"):
        ModelRunner(tiny_model_dir, dtype="int3", progress=False)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ModelRunner(tiny_model_dir, max_model_len=10**6, progress=False)


def test_small_model_runs_single_threaded_on_cpu(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenMP threads only slow a tiny model down on a shared machine; OMP_NUM_THREADS still wins."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        ModelRunner(tiny_model_dir, device="cpu", kv_cache_memory=2**22, progress=False)
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        ModelRunner(tiny_model_dir, device="cpu", kv_cache_memory=2**22, progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_loading_imports_no_more_of_torch_and_fills_every_weight(tiny_model_dir: Path) -> None:
    """Loading builds no tensor through torch's Python decompositions: their first use imports ~800
    modules (sympy, torch.fx's symbolic shapes, FSDP), which took 3.5-4.5 s of a GPU host's start-up
    (session 11). A fresh process, so that nothing before has imported them. The parameters, left
    uninitialised by the layers, each hold their checkpoint tensor afterwards."""
    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from r1serve.checkpoint import iter_tensors, load_config, weight_files\n"
        "from r1serve.model.loader import checkpoint_layout, load_model\n"
        f"model_dir = Path({str(tiny_model_dir)!r})\n"
        "before = set(sys.modules)\n"
        "model = load_model(model_dir, load_config(model_dir), torch.device('cpu'), torch.bfloat16, False)\n"
        "imported = sorted(set(sys.modules) - before)\n"
        "layout = checkpoint_layout(model)\n"
        "for name, tensor in iter_tensors(weight_files(model_dir), list(layout)):\n"
        "    slot = layout[name]\n"
        "    held = slot.param.narrow(0, slot.row, tensor.shape[0])\n"
        "    assert held.dtype == torch.bfloat16 and torch.equal(held, tensor.to(torch.bfloat16)), name\n"
        "print(imported)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    imported = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert len(imported) < 20, imported
