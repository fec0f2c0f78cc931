"""The decoder (Qwen2 / Llama) in plain PyTorch over a paged KV cache."""

from r1serve.model.attention import AttentionMetadata, paged_attention, store_kv
from r1serve.model.decoder import CausalLM
from r1serve.model.loader import load_model

__all__ = ["AttentionMetadata", "CausalLM", "load_model", "paged_attention", "store_kv"]
