"""Batched sampling on the device: penalties, temperature, top-k, top-p, per-request seeds.

Sampling uses the exponential-race form (argmax of p / q with q ~ Exp(1)), equivalent to drawing
from p but with noise that each seeded request draws from its own torch.Generator, so a seeded
request is reproducible whatever else shares its batch.

The per-row settings travel to the device in one non-blocking copy: a tensor built from a Python list
on a CUDA device is a blocking copy, which would wait for the whole forward pass before the sampling
kernels could even be queued. `sample` only queues work; the step's one host sync is the caller's
`.tolist()`, so the engine can do its bookkeeping while the GPU finishes.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as Seq

import numpy as np
import torch

from r1serve.engine.sequence import SamplingParams


def to_device(values: list | np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host values (a list or a numpy array) as a tensor on `device`, queued without waiting for the
    device.

    A plain host-to-GPU copy synchronises with the stream; from pinned memory (torch's caching host
    allocator, which also keeps the buffer until the copy is done) it is queued like a kernel."""
    host = torch.as_tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def apply_penalties(
    logits: torch.Tensor, rows: list[int], outputs: list[list[int]], params: list[SamplingParams]
) -> None:
    """OpenAI presence/frequency penalties over each sequence's generated tokens, in place."""
    device, vocab = logits.device, logits.shape[-1]
    # One count matrix for all penalized rows, filled by one scatter over (row, token) positions.
    flat = [i * vocab + t for i, tokens in enumerate(outputs) for t in tokens]
    counts = torch.zeros(len(rows) * vocab, device=device)
    if flat:
        counts.scatter_add_(0, to_device(flat, torch.int64, device), torch.ones(len(flat), device=device))
    counts = counts.view(len(rows), vocab)
    weights = to_device([[p.frequency_penalty, p.presence_penalty] for p in params], torch.float32, device)
    penalty = weights[:, :1] * counts + weights[:, 1:] * (counts > 0).float()
    index = to_device(rows, torch.int64, device)
    logits.index_copy_(0, index, logits.index_select(0, index) - penalty)


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


# One request of each kind of sampling the API lets through: greedy; R1's defaults (temperature, top-p:
# the sort); top-k with a seed and both penalties (the scatter and the per-request noise).
WARMUP_PARAMS = (
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.6, top_p=0.95),
    SamplingParams(temperature=0.7, top_k=20, seed=0, presence_penalty=0.5, frequency_penalty=0.5),
)


class Sampler:
    def warmup(self, vocab_size: int, device: torch.device, batch_sizes: Iterable[int]) -> None:
        """Takes every sampling path once at each batch size, before the server is ready. CUDA loads
        a kernel's module on its first launch (lazy loading: PyTorch asks for it unless
        CUDA_MODULE_LOADING says otherwise), and the forward passes that warm the runner up launch
        none of the sampler's. On an H200 a process's first sampling call took 290 ms, the next ones
        under 2 ms, and without this a 1.5B server's first request took 161-198 ms to its first
        token at the client against 8 ms for the next (docs/PERFORMANCE.md, session 10)."""
        for rows in batch_sizes:
            logits = torch.zeros(rows, vocab_size, device=device)
            for params in WARMUP_PARAMS:
                generator = None if params.seed is None else torch.Generator(device).manual_seed(params.seed)
                self(logits.clone(), [params] * rows, [[0]] * rows, [generator] * rows)

    def __call__(
        self,
        logits: torch.Tensor,
        params: Seq[SamplingParams],
        outputs: Seq[list[int]],
        generators: Seq[torch.Generator | None],
    ) -> list[int]:
        """One token per row of `logits` [batch, vocab] (float32)."""
        return self.sample(logits, params, outputs, generators).tolist()

    def sample(
        self,
        logits: torch.Tensor,
        params: Seq[SamplingParams],
        outputs: Seq[list[int]],
        generators: Seq[torch.Generator | None],
    ) -> torch.Tensor:
        """As `__call__`, but the token ids stay on the device: nothing here waits for the GPU."""
        penalized = [i for i, p in enumerate(params) if p.has_penalties]
        if penalized:
            apply_penalties(
                logits, penalized, [outputs[i] for i in penalized], [params[i] for i in penalized]
            )
        greedy_tokens = logits.argmax(dim=-1)
        if all(p.greedy for p in params):
            return greedy_tokens

        device, vocab = logits.device, logits.shape[-1]
        # One row of settings per sequence: temperature, top-k, top-p, greedy; one tensor, one copy.
        # float32 holds every top-k below the vocabulary size exactly (vocabularies are far below 2**24);
        # a larger one keeps every token, and one past float32's range would fail the whole batch.
        settings = to_device(
            [
                [
                    1.0 if p.greedy else p.temperature,
                    min(p.top_k, vocab) if p.top_k > 0 else vocab,
                    p.top_p,
                    p.greedy,
                ]
                for p in params
            ],
            torch.float32,
            device,
        )
        logits = logits / settings[:, 0:1]
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            logits = top_k_top_p_mask(logits, settings[:, 1], settings[:, 2])
        probs = logits.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_()
        for i, generator in enumerate(generators):
            if generator is not None:
                noise[i].exponential_(generator=generator)
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(settings[:, 3] > 0, greedy_tokens, sampled)
