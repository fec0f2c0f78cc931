"""The tiny checkpoint: Hugging Face layout (transformers loads it), deterministic per seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from r1serve.model_runner import ModelRunner, ScheduledSeq
from r1serve.tiny_model import write_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


def _contents(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_layout_and_defaults(tiny_model_dir: Path) -> None:
    assert {p.name for p in tiny_model_dir.iterdir()} == FILES
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert (generation["temperature"], generation["top_p"]) == (0.6, 0.95)
    tokenizer_config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"].endswith("{{'<｜Assistant｜><think>\\n'}}{% endif %}")


def test_deterministic_per_seed(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = write_tiny_model(tmp_path / "again")
    assert _contents(again) == _contents(tiny_model_dir)
    other = _contents(write_tiny_model(tmp_path / "other", seed=1))
    first = _contents(tiny_model_dir)
    assert other["model.safetensors"] != first["model.safetensors"]
    assert other["tokenizer.json"] == first["tokenizer.json"]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_transformers_loads_it_and_agrees(arch: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = tiny_model_dir if arch == "qwen2" else write_tiny_model(tmp_path / arch, arch=arch)
    hf_tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert type(hf).__name__ == {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[arch]
    assert hf_tok.eos_token == "<｜end▁of▁sentence｜>" and hf_tok.bos_token == "<｜begin▁of▁sentence｜>"
    prompt = hf_tok.apply_chat_template(
        [{"role": "user", "content": "Hello!"}], tokenize=False, add_generation_prompt=True
    )
    ids = hf_tok(prompt, add_special_tokens=False).input_ids
    runner = ModelRunner(
        model_dir, device="cpu", block_size=8, kv_cache_memory=2**20, max_model_len=256, progress=False
    )
    assert (
        runner.tokenizer.encode(runner.tokenizer.apply_chat_template([{"role": "user", "content": "Hello!"}]))
        == ids
    )
    logits = runner.run([ScheduledSeq(ids, 0, list(range(-(-len(ids) // 8))))])
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(logits[0], expected, atol=1e-4, rtol=1e-4)


def test_unknown_architecture(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported tiny-model architecture 'gpt2'"):
        write_tiny_model(tmp_path, arch="gpt2")
