"""Broken or unsupported checkpoints fail with one CheckpointError that names the problem."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from r1serve.checkpoint import CheckpointError, load_config
from r1serve.model_runner import ModelRunner
from safetensors.torch import load_file, save_file


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _edit_weights(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def _break_architecture(d: Path) -> None:
    _edit_json(d / "config.json", lambda c: c.update(architectures=["MistralForCausalLM"]))


def _break_config_json(d: Path) -> None:
    (d / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"],')


def _drop_weight_file(d: Path) -> None:
    (d / "model.safetensors").unlink()


def _drop_tensor(d: Path) -> None:
    _edit_weights(d / "model.safetensors", lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))


def _reshape_tensor(d: Path) -> None:
    _edit_weights(d / "model.safetensors", lambda t: t.update({"model.norm.weight": torch.ones(65)}))


def _drop_config_field(d: Path) -> None:
    _edit_json(d / "config.json", lambda c: c.pop("num_hidden_layers"))


def _drop_tokenizer(d: Path) -> None:
    (d / "tokenizer.json").unlink()


def _corrupt_weights(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")


def _unsupported_rope(d: Path) -> None:
    _edit_json(d / "config.json", lambda c: c.update(rope_scaling={"rope_type": "yarn", "factor": 4.0}))


def _break_chat_template(d: Path) -> None:
    _edit_json(d / "tokenizer_config.json", lambda c: c.update(chat_template="{% if messages %}unclosed"))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_break_architecture, r"unsupported architecture \['MistralForCausalLM'\]"),
        (_break_config_json, r"config\.json: invalid JSON"),
        (_drop_weight_file, r"missing weight file model\.safetensors"),
        (_drop_tensor, r"lacks tensor model\.layers\.1\.self_attn\.k_proj\.bias"),
        (_reshape_tensor, r"tensor model\.norm\.weight has shape \[65\], expected \[64\]"),
        (_drop_config_field, r"missing field 'num_hidden_layers'"),
        (_drop_tokenizer, r"missing tokenizer\.json"),
        (_corrupt_weights, r"unreadable safetensors file"),
        (_unsupported_rope, r"unsupported rope type 'yarn'"),
        (_break_chat_template, r"chat template does not compile"),
    ],
)
def test_broken_checkpoint_is_named(model_copy: Path, breakage: Callable[[Path], None], message: str) -> None:
    breakage(model_copy)
    with pytest.raises(CheckpointError, match=message) as err:
        ModelRunner(model_copy, progress=False)
    assert "\n" not in str(err.value)


def test_missing_shard_is_named(model_copy: Path) -> None:
    tensors = load_file(model_copy / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    index = {"metadata": {}, "weight_map": {n: shard for shard, ns in shards.items() for n in ns}}
    (model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    save_file(
        {n: tensors[n] for n in shards["model-00001-of-00002.safetensors"]},
        model_copy / "model-00001-of-00002.safetensors",
    )
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing weight file model-00002-of-00002\.safetensors"):
        ModelRunner(model_copy, progress=False)


def test_missing_directory() -> None:
    with pytest.raises(CheckpointError, match=r"missing config\.json"):
        load_config(Path("/nonexistent/model"))
