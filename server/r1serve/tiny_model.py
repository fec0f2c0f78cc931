"""A tiny random-weight checkpoint in exactly the Hugging Face layout of DeepSeek-R1-Distill.

Real BPE tokenizer (trained on the text in `r1serve/data/`), DeepSeek-R1's special tokens and chat
template, random weights. It runs in seconds on a CPU, so tests and the local stack exercise the
whole serving path; generated text is gibberish.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
# DeepSeek-R1-Distill's added tokens, in its order; <think> and </think> are not "special", so
# they survive skip_special_tokens and the reasoning parser can see them.
SPECIAL_TOKENS = [
    EOS,
    BOS,
    PAD,
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
    "<｜tool▁sep｜>",
]
THINK_TOKENS = ["<think>", "</think>"]
# the pre-tokenizer split of Qwen2 / Llama 3
_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BPE_VOCAB = 2000
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


def _data(name: str) -> str:
    return resources.files("r1serve.data").joinpath(name).read_text(encoding="utf-8")


def _corpus() -> list[str]:
    files = sorted(p.name for p in resources.files("r1serve.data").iterdir() if p.name.startswith("corpus_"))
    return [line for name in files for line in _data(name).splitlines() if line.strip()]


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in THINK_TOKENS])
    bos_id = tok.token_to_id(BOS)
    # like R1-Distill: encode(..., add_special_tokens=True) prepends BOS
    tok.post_processor = TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def _added_tokens_decoder(tok: Tokenizer) -> dict[str, Any]:
    return {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t not in THINK_TOKENS,
        }
        for t in SPECIAL_TOKENS + THINK_TOKENS
    }


def _config(arch: str, vocab_size: int, bos_id: int, eos_id: int) -> dict[str, Any]:
    common = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 4096,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if arch == "qwen2":  # as R1-Distill-Qwen
        return common | {
            "max_window_layers": 2,
            "rope_theta": 10000.0,
            "sliding_window": 4096,
            "use_sliding_window": False,
        }
    # as R1-Distill-Llama: llama3 rope scaling, no biases
    return common | {
        "attention_bias": False,
        "mlp_bias": False,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 512,
        },
    }


def _weights(cfg: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    head_dim = hidden // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * cfg["initializer_range"]).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": rand(vocab, hidden), "model.norm.weight": torch.ones(hidden)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": torch.ones(hidden),
            p + "post_attention_layernorm.weight": torch.ones(hidden),
            p + "self_attn.q_proj.weight": rand(q, hidden),
            p + "self_attn.k_proj.weight": rand(kv, hidden),
            p + "self_attn.v_proj.weight": rand(kv, hidden),
            p + "self_attn.o_proj.weight": rand(hidden, q),
            p + "mlp.gate_proj.weight": rand(inter, hidden),
            p + "mlp.up_proj.weight": rand(inter, hidden),
            p + "mlp.down_proj.weight": rand(hidden, inter),
        }
        if cfg["model_type"] == "qwen2":
            tensors |= {p + f"self_attn.{x}_proj.bias": rand(n) for x, n in (("q", q), ("k", kv), ("v", kv))}
    tensors["lm_head.weight"] = rand(vocab, hidden)
    return {name: t.to(torch.bfloat16).contiguous() for name, t in tensors.items()}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tiny_model(out_dir: Path, arch: str = "qwen2", seed: int = 0) -> Path:
    """Writes the checkpoint into `out_dir` (created if needed) and returns it. Deterministic per seed."""
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unsupported tiny-model architecture {arch!r} (supported: {', '.join(ARCHITECTURES)})"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    tok.save(str(out_dir / "tokenizer.json"))
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    cfg = _config(arch, tok.get_vocab_size(with_added_tokens=True), bos_id, eos_id)
    _write_json(out_dir / "config.json", cfg)
    save_file(_weights(cfg, seed), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    _write_json(
        out_dir / "generation_config.json",
        {
            "_from_model_config": True,
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "do_sample": True,
            "temperature": 0.6,
            "top_p": 0.95,
        },
    )
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": _added_tokens_decoder(tok),
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "clean_up_tokenization_spaces": False,
            "legacy": True,
            "model_max_length": cfg["max_position_embeddings"],
            "sp_model_kwargs": {},
            "unk_token": None,
            "tokenizer_class": "LlamaTokenizerFast",
            "chat_template": _data("r1_chat_template.jinja").rstrip("\n"),
        },
    )
    return out_dir
