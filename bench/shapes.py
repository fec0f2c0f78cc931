"""The benchmark shapes: the real DeepSeek-R1-Distill configs with random weights.

Weights cannot be downloaded on the GPU machine, and decode speed does not depend on their values;
the tokenizer is the tiny model's, its vocabulary padded with filler words up to the real size, so
every id the random model emits decodes to text and streams as a chunk, as a real model's would.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from r1serve.tiny_model import build_tokenizer, write_tiny_model
from safetensors.torch import save_file

QWEN2_COMMON = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_sliding_window": False,
    "sliding_window": 4096,
    "max_window_layers": 21,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
}
SHAPES = {
    "1.5b": QWEN2_COMMON
    | {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
    },
    "7b": QWEN2_COMMON
    | {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_window_layers": 28,
    },
}


def weight_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    head_dim = h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    shapes = {
        "model.embed_tokens.weight": (vocab, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (vocab, h),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.q_proj.bias": (q,),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        }
    return shapes


def bytes_per_decode_step(cfg: dict, dtype_bytes: int = 2) -> int:
    """Weight bytes one decode step must read: every layer, the final norm and the LM head. The
    embedding table is read one row per token, so it does not count."""
    shapes = weight_shapes(cfg)
    return dtype_bytes * sum(
        torch.Size(s).numel() for name, s in shapes.items() if name != "model.embed_tokens.weight"
    )


def kv_bytes_per_token(cfg: dict, dtype_bytes: int = 2) -> int:
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * dtype_bytes


def pad_vocabulary(path: Path, size: int) -> None:
    """Adds filler tokens (" w<id>", unreachable by encoding, decodable) up to `size` ids."""
    data = json.loads(path.read_text())
    used = set(data["model"]["vocab"].values()) | {t["id"] for t in data["added_tokens"]}
    data["model"]["vocab"] |= {f"\u0120w{i}": i for i in range(size) if i not in used}
    path.write_text(json.dumps(data, ensure_ascii=False))


def write_checkpoint(
    out_dir: Path, shape: str, shard_bytes: int = 4 * 2**30, num_hidden_layers: int | None = None
) -> Path:
    """A Hugging Face checkpoint of `shape` with random bf16 weights (sharded like the real ones);
    `num_hidden_layers` makes a shallower one (tests)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tiny_model(out_dir)  # tokenizer, tokenizer_config (chat template), generation_config
    (out_dir / "model.safetensors").unlink()
    tok = build_tokenizer()
    cfg = SHAPES[shape] | {"bos_token_id": tok.token_to_id("<｜begin▁of▁sentence｜>")}
    if num_hidden_layers is not None:
        cfg["num_hidden_layers"] = num_hidden_layers
    pad_vocabulary(out_dir / "tokenizer.json", cfg["vocab_size"])
    cfg["eos_token_id"] = tok.token_to_id("<｜end▁of▁sentence｜>")
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    gen = torch.Generator().manual_seed(0)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, s in weight_shapes(cfg).items():
        if name.endswith("norm.weight"):
            t = torch.ones(s, dtype=torch.bfloat16)
        else:
            t = (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16)
        if size + t.numel() * 2 > shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.numel() * 2
    index = {
        "metadata": {"total_size": sum(t.numel() * 2 for sh in shards for t in sh.values())},
        "weight_map": {},
    }
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
        index["weight_map"] |= dict.fromkeys(shard, fname)
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return out_dir
