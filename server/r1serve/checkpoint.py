"""A Hugging Face checkpoint directory: its config, generation defaults and tensors, validated.

Every problem with the directory (missing file, bad JSON, unsupported architecture, missing or
mis-shaped tensor) is raised as one `CheckpointError` whose message names the problem, so the CLI
can print it on one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

if TYPE_CHECKING:  # safetensors loads it to read tensors; the API processes only read the config
    import torch

# HF architecture name -> our short name. Both are the same decoder; the differences are data.
ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(Exception):
    """The checkpoint directory cannot be served; the message says why."""


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    # "default" or "llama3"; other HF rope types are rejected when the config is read
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # "qwen2" or "llama"
    hf_architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    torch_dtype: str | None


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling defaults the checkpoint ships in generation_config.json (R1: temperature 0.6, top_p 0.95)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    do_sample: bool = True
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: missing {path.name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope_config(raw: dict[str, Any], path: Path) -> RopeConfig:
    # transformers 5 writes "rope_parameters" (theta inside); released R1 checkpoints use
    # top-level "rope_theta" plus an optional "rope_scaling".
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return RopeConfig(theta=theta)
    if kind != "llama3":
        raise CheckpointError(f"{path}: unsupported rope type {kind!r} (supported: default, llama3)")
    try:
        return RopeConfig(
            theta=theta,
            kind="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise CheckpointError(f"{path}: llama3 rope scaling lacks {e.args[0]!r}") from e


def load_config(model_dir: Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    raw = read_json(path)
    archs = raw.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None:
        raise CheckpointError(
            f"{path}: unsupported architecture {archs or raw.get('model_type')!r} "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )
    if raw.get("use_sliding_window"):
        raise CheckpointError(f"{path}: sliding-window attention is not supported")
    if raw.get("mlp_bias"):
        raise CheckpointError(f"{path}: mlp_bias is not supported")
    try:
        heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        return ModelConfig(
            architecture=ARCHITECTURES[arch],
            hf_architecture=arch,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=_rope_config(raw, path),
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            # Qwen2 always has q/k/v biases; Llama has them only when attention_bias says so.
            attention_bias=arch == "Qwen2ForCausalLM" or bool(raw.get("attention_bias", False)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=_token_ids(raw.get("eos_token_id")),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
        )
    except KeyError as e:
        raise CheckpointError(f"{path}: missing field {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad value ({e})") from e


def load_generation_defaults(model_dir: Path, config: ModelConfig) -> GenerationDefaults:
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return GenerationDefaults(eos_token_ids=config.eos_token_ids)
    raw = read_json(path)
    try:
        return GenerationDefaults(
            temperature=float(raw.get("temperature", 1.0)),
            top_p=float(raw.get("top_p", 1.0)),
            top_k=int(raw.get("top_k") or 0),
            do_sample=bool(raw.get("do_sample", True)),
            eos_token_ids=_token_ids(raw.get("eos_token_id")) or config.eos_token_ids,
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad value ({e})") from e


def weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it (one file, or shards listed in the index)."""
    model_dir = Path(model_dir)
    index_path = model_dir / INDEX_FILE
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: no weight_map")
        files = {name: model_dir / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise CheckpointError(
                    f"{model_dir}: missing weight file {shard.name} (listed in {INDEX_FILE})"
                )
        return files
    single = model_dir / SINGLE_FILE
    if single.is_file():
        return {name: single for name in _tensor_names(single)}
    raise CheckpointError(f"{model_dir}: missing weight file {SINGLE_FILE} (or {INDEX_FILE} with shards)")


def _tensor_names(path: Path) -> list[str]:
    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e


def iter_tensors(files: dict[str, Path], names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, CPU tensor) for the given names, opening each shard once."""
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    for path, file_names in by_file.items():
        try:
            with safe_open(path, framework="pt") as f:
                for name in file_names:
                    yield name, f.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e
