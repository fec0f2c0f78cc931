"""The peer baseline: Hugging Face transformers generate() (eager, sdpa) on the same card."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def load(model_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa")
    return model.to("cuda").eval()


@torch.inference_mode()
def generate_tok_s(model, batch: int, prompt_len: int, output_len: int) -> float:
    """Output tokens/s of one greedy generate() over a batch of equal-length random prompts."""
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, prompt_len), device="cuda")
    mask = torch.ones_like(ids)
    kwargs = dict(attention_mask=mask, do_sample=False, min_new_tokens=output_len, max_new_tokens=output_len)
    model.generate(ids, **(kwargs | {"min_new_tokens": 4, "max_new_tokens": 4}))  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(ids, **kwargs)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return batch * (out.shape[1] - prompt_len) / seconds
