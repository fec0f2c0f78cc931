"""Rotary position embedding, with Llama 3's frequency scaling (R1-Distill-Llama)."""

from __future__ import annotations

import math

import torch

from r1serve.checkpoint import RopeConfig
from r1serve.model import triton_fused


def inverse_frequencies(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    inv_freq = 1.0 / (
        rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim)
    )
    if rope.kind != "llama3":
        return inv_freq
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend smoothly in between.
    old_len = rope.original_max_position_embeddings
    low_freq_wavelen = old_len / rope.low_freq_factor
    high_freq_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(torch.nn.Module):
    def __init__(self, head_dim: int, rope: RopeConfig) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rope = rope
        # computed on the CPU even when the model is built on the meta device; copied per device on use
        self._inv_freq = {torch.device("cpu"): inverse_frequencies(head_dim, rope)}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        """The float32 inverse frequencies `[head_dim / 2]` on `device`."""
        inv_freq = self._inv_freq.get(device)
        if inv_freq is None:
            inv_freq = self._inv_freq[device] = self._inv_freq[torch.device("cpu")].to(device)
        return inv_freq

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotates q `[tokens, heads, d]` and k `[tokens, kv_heads, d]` by their positions `[tokens]`."""
        # angles in float32 (as transformers does), then applied in the activations' dtype
        inv_freq = self.inv_freq(positions.device)
        if triton_fused.supports(q):
            triton_fused.rope_(q, k, positions, inv_freq)
            return q, k
        freqs = positions[:, None].float() * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos().to(q.dtype)[:, None, :]
        sin = emb.sin().to(q.dtype)[:, None, :]
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
