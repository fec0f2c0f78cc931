"""The Qwen2 / Llama decoder: embeddings, N x (attention + MLP), final norm, LM head.

Parameters are named like the Hugging Face modules, except that q/k/v and gate/up are fused
(`qkv_proj`, `gate_up_proj`); `loader.py` maps the checkpoint's tensors onto them.

With tensor parallelism (`parallel.py`) each rank holds `1/tp` of the query and KV heads, of the
MLP's hidden units and of the vocabulary rows of the LM head; embeddings and norms are whole on
every rank. Its KV cache holds only its own KV heads.
"""

from __future__ import annotations

import torch
from torch import nn

from r1serve.checkpoint import ModelConfig
from r1serve.model import triton_fused
from r1serve.model.attention import AttentionMetadata, paged_attention, store_kv
from r1serve.model.layers import Embedding, RMSNorm, SwiGLU
from r1serve.model.parallel import SINGLE, ColumnParallelLinear, RowParallelLinear, TensorParallel
from r1serve.model.rotary import RotaryEmbedding


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding, tp: TensorParallel) -> None:
        super().__init__()
        # this rank's heads; a query head's KV head (head // group) is on the same rank
        self.num_heads = tp.split(config.num_attention_heads, "num_attention_heads")
        self.num_kv_heads = tp.split(config.num_key_value_heads, "num_key_value_heads")
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        q, kv = config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim
        self.qkv_proj = ColumnParallelLinear(
            config.hidden_size, [q, kv, kv], bias=config.attention_bias, tp=tp
        )
        self.o_proj = RowParallelLinear(q, config.hidden_size, bias=False, tp=tp)
        self.rotary = rotary
        # views into the runner's cache, set by `CausalLM.bind_kv_cache`
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        if triton_fused.supports(qkv) and self.head_dim & (self.head_dim - 1) == 0:
            # rotary and the K/V store in one launch (a decode step is bound by launches, not math)
            q = triton_fused.rope_store_kv(
                qkv, positions, self.rotary.inv_freq(positions.device), self.k_cache, self.v_cache,
                meta.slot_mapping, self.num_heads, self.num_kv_heads, self.head_dim,
            )  # fmt: skip
            return self.o_proj(paged_attention(q, self.k_cache, self.v_cache, meta).flatten(1))
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(positions, q, k)
        store_kv(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        out = paged_attention(q, self.k_cache, self.v_cache, meta)
        return self.o_proj(out.flatten(1))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding, tp: TensorParallel) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, rotary, tp)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, tp)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it); the next layer's norm adds them,
        so each add shares a launch with a norm (vLLM's layout, same arithmetic as transformers)."""
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.add_forward(x, residual)
        h, residual = self.post_attention_layernorm.add_forward(self.self_attn(h, positions, meta), residual)
        return self.mlp(h), residual


class DecoderModel(nn.Module):
    def __init__(self, config: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        rotary = RotaryEmbedding(config.head_dim, config.rope)
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, rotary, tp) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(x, residual, positions, meta)
        return self.norm.add_forward(x, residual)[0] if residual is not None else self.norm(x)


class CausalLM(nn.Module):
    def __init__(self, config: ModelConfig, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.config = config
        self.tp = tp
        self.model = DecoderModel(config, tp)
        # tied checkpoints have no lm_head tensor; the embedding matrix doubles as the LM head
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else ColumnParallelLinear(config.hidden_size, [config.vocab_size], bias=False, tp=tp)
        )

    def bind_kv_cache(self, kv_cache: torch.Tensor) -> None:
        """kv_cache: `[2, num_layers, num_blocks, block_size, kv_heads, head_dim]`."""
        for i, layer in enumerate(self.model.layers):
            layer.self_attn.k_cache = kv_cache[0, i]
            layer.self_attn.v_cache = kv_cache[1, i]

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """Hidden states `[num_tokens, hidden]` of the packed tokens; writes their K/V to the cache."""
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits `[tokens, vocab]` (all of them, on every rank)."""
        if self.lm_head is not None:
            weight = self.lm_head.weight
        else:  # tied: this rank's vocabulary rows of the (whole) embedding
            start, rows, _ = self.tp.shard(self.config.vocab_size)
            weight = self.model.embed_tokens.weight.narrow(0, start, rows)
        return self.tp.gather_columns(hidden @ weight.t(), self.config.vocab_size)
