"""Batched sampling on the device: penalties, temperature, top-k, top-p, per-request seeds.

Sampling uses the exponential-race form (argmax of p / q with q ~ Exp(1)), equivalent to drawing
from p but with noise that each seeded request draws from its own torch.Generator, so a seeded
request is reproducible whatever else shares its batch. The only host sync is the final `.tolist()`.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from r1serve.engine.sequence import SamplingParams


def apply_penalties(
    logits: torch.Tensor, rows: list[int], outputs: list[list[int]], params: list[SamplingParams]
) -> None:
    """OpenAI presence/frequency penalties over each sequence's generated tokens, in place."""
    vocab = logits.shape[-1]
    for row, tokens, p in zip(rows, outputs, params, strict=True):
        if not tokens:
            continue
        ids = torch.tensor(tokens, device=logits.device)
        counts = torch.zeros(vocab, device=logits.device).scatter_add_(
            0, ids, torch.ones_like(ids, dtype=torch.float)
        )
        logits[row] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()


def top_k_top_p_mask(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Logits with everything outside each row's top-k and top-p nucleus set to -inf."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=logits.device).expand_as(sorted_logits)
    drop = rank >= top_k.unsqueeze(1)
    probs = sorted_logits.softmax(dim=-1)
    # Drop a token when the tokens ranked above it already reach top_p (the top one always stays).
    drop |= (probs.cumsum(dim=-1) - probs) >= top_p.unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


class Sampler:
    def __call__(
        self,
        logits: torch.Tensor,
        params: Seq[SamplingParams],
        outputs: Seq[list[int]],
        generators: Seq[torch.Generator | None],
    ) -> list[int]:
        """One token per row of `logits` [batch, vocab] (float32)."""
        penalized = [i for i, p in enumerate(params) if p.has_penalties]
        if penalized:
            apply_penalties(
                logits, penalized, [outputs[i] for i in penalized], [params[i] for i in penalized]
            )
        greedy_tokens = logits.argmax(dim=-1)
        if all(p.greedy for p in params):
            return greedy_tokens.tolist()

        device, vocab = logits.device, logits.shape[-1]
        temperature = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params], device=device)
        logits = logits / temperature.unsqueeze(1)
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=device)
            top_p = torch.tensor([p.top_p for p in params], device=device)
            logits = top_k_top_p_mask(logits, top_k, top_p)
        probs = logits.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_()
        for i, generator in enumerate(generators):
            if generator is not None:
                noise[i].exponential_(generator=generator)
        sampled = (probs / noise).argmax(dim=-1)
        greedy = torch.tensor([p.greedy for p in params], device=device)
        return torch.where(greedy, greedy_tokens, sampled).tolist()
