"""Our decoder against Hugging Face transformers (the reference implementation), float32 on CPU.

Random tiny configs of both architectures: Qwen2 (GQA, QKV bias, tied and untied embeddings) and
Llama (llama3 rope scaling, no bias). Logits must match within float32 tolerance and greedy
generation must match `generate()` token for token, through the paged cache with small blocks.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from r1serve.model_runner import ModelRunner, ScheduledSeq
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

BLOCK = 4  # small blocks so every prompt spans several, non-contiguous ones
COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
)
CONFIGS = {
    "qwen2-untied": Qwen2Config(**COMMON, tie_word_embeddings=False),
    "qwen2-tied": Qwen2Config(**COMMON, tie_word_embeddings=True),
    # original context of 32 tokens so prompts reach the scaled and the blended frequency bands
    "llama3-rope": LlamaConfig(
        **COMMON,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
}
PROMPT_LENGTHS = (1, 5, 13, 40)
# CUDA runs where there is a GPU (the H100 job); CI has none
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _random_model(config: Qwen2Config | LlamaConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        # wide random weights (and non-zero biases, norms) so logits are far apart and greedy
        # choices are not decided by rounding
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.15)
    return model.eval()


def _save(hf: torch.nn.Module, out: Path, tiny_model_dir: Path, **save_options: object) -> Path:
    hf.save_pretrained(out, **save_options)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the runner loads a tokenizer too
        shutil.copy(tiny_model_dir / name, out / name)
    return out


@pytest.fixture(scope="module", params=[(c, d) for d in DEVICES for c in CONFIGS], ids="-".join)
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[tuple[torch.nn.Module, ModelRunner]]:
    name, device = request.param
    hf = _random_model(CONFIGS[name], seed=len(name))
    out = _save(hf, tmp_path_factory.mktemp(name), tiny_model_dir)
    runner = ModelRunner(
        out, device=device, dtype="float32", block_size=BLOCK, kv_cache_memory=2**20, progress=False
    )
    yield hf.to(device), runner


def _prompt(length: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, COMMON["vocab_size"], (length,), generator=gen).tolist()


class Blocks:
    """The test's stand-in for the engine's block manager: hands out blocks in a scrambled order."""

    def __init__(self, num_blocks: int) -> None:
        self.free = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0)).tolist()

    def table_for(self, table: list[int], tokens: int) -> list[int]:
        while len(table) * BLOCK < tokens:
            table.append(self.free.pop())
        return table


def _hf_last_logits(hf: torch.nn.Module, ids: Sequence[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([list(ids)], device=hf.device)).logits[0, -1].float()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_prefill_logits_match(pair: tuple[torch.nn.Module, ModelRunner], batch_size: int) -> None:
    hf, runner = pair
    blocks = Blocks(runner.num_blocks)
    for first in range(0, len(PROMPT_LENGTHS), batch_size):
        lengths = [PROMPT_LENGTHS[(first + i) % len(PROMPT_LENGTHS)] for i in range(batch_size)]
        prompts = [_prompt(n, seed=n + i) for i, n in enumerate(lengths)]
        batch = [ScheduledSeq(p, 0, blocks.table_for([], len(p))) for p in prompts]
        logits = runner.run(batch)
        for row, prompt in zip(logits, prompts, strict=True):
            torch.testing.assert_close(row, _hf_last_logits(hf, prompt), atol=1e-4, rtol=1e-4)


def test_chunked_prefill_matches(pair: tuple[torch.nn.Module, ModelRunner]) -> None:
    """A 23-token prompt computed as chunks of 9 + 9 + 5 (boundaries inside blocks) gives the full logits."""
    hf, runner = pair
    prompt = _prompt(23, seed=7)
    table = Blocks(runner.num_blocks).table_for([], len(prompt))
    for start in (0, 9, 18):
        logits = runner.run([ScheduledSeq(prompt[start : start + 9], start, table)])
        torch.testing.assert_close(logits[0], _hf_last_logits(hf, prompt[: start + 9]), atol=1e-4, rtol=1e-4)


def _greedy(runner: ModelRunner, prompts: list[list[int]], steps: int) -> list[list[int]]:
    """Batched greedy decoding: all prompts prefilled in one step, then decoded together."""
    blocks = Blocks(runner.num_blocks)
    tables = [blocks.table_for([], len(p)) for p in prompts]
    seqs = [list(p) for p in prompts]
    logits = runner.run([ScheduledSeq(p, 0, t) for p, t in zip(prompts, tables, strict=True)])
    for _ in range(steps):
        for seq, row in zip(seqs, logits, strict=True):
            seq.append(int(row.argmax()))
        batch = [
            ScheduledSeq(seq[-1:], len(seq) - 1, blocks.table_for(table, len(seq)))
            for seq, table in zip(seqs, tables, strict=True)
        ]
        logits = runner.run(batch)
    return [seq[len(p) :] for seq, p in zip(seqs, prompts, strict=True)]


@pytest.mark.parametrize("lengths", [(6,), (3, 17, 9)])
def test_greedy_generation_matches(
    pair: tuple[torch.nn.Module, ModelRunner], lengths: tuple[int, ...]
) -> None:
    hf, runner = pair
    prompts = [_prompt(n, seed=100 + n) for n in lengths]
    ours = _greedy(runner, prompts, steps=12)
    for prompt, generated in zip(prompts, ours, strict=True):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([prompt], device=hf.device),
                max_new_tokens=12,
                min_new_tokens=12,
                do_sample=False,
                eos_token_id=None,
            )
        assert generated == ref[0, len(prompt) :].tolist()


def test_sharded_checkpoint_loads(tmp_path: Path, tiny_model_dir: Path) -> None:
    hf = _random_model(CONFIGS["qwen2-untied"], seed=3)
    _save(hf, tmp_path, tiny_model_dir, max_shard_size="40KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").is_file()
    runner = ModelRunner(
        tmp_path, device="cpu", dtype="float32", block_size=BLOCK, kv_cache_memory=2**20, progress=False
    )
    prompt = _prompt(11, seed=11)
    logits = runner.run([ScheduledSeq(prompt, 0, Blocks(runner.num_blocks).table_for([], len(prompt)))])
    torch.testing.assert_close(logits[0], _hf_last_logits(hf, prompt), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the H100 job); CI has none")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_bfloat16_on_cuda(name: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    """The serving default on a GPU: dtype and KV cache size chosen automatically, bf16 logits close to
    transformers' bf16 logits, and the same greedy tokens."""
    hf = _random_model(CONFIGS[name], seed=1)
    runner = ModelRunner(_save(hf, tmp_path, tiny_model_dir), block_size=16, progress=False)
    assert (runner.device.type, runner.dtype) == ("cuda", torch.bfloat16)
    assert runner.num_blocks * runner.block_size >= runner.max_model_len
    hf = hf.to("cuda", torch.bfloat16)
    prompts = [_prompt(n, seed=n) for n in (5, 33, 70)]
    tables = [list(range(i * 8, i * 8 + 5)) for i in range(len(prompts))]
    logits = runner.run([ScheduledSeq(p, 0, t) for p, t in zip(prompts, tables, strict=True)])
    for row, prompt in zip(logits, prompts, strict=True):
        expected = _hf_last_logits(hf, prompt)
        err = float((row - expected).abs().max())
        print(f"{name}: bf16 max |logit diff| {err:.4f} of max |logit| {float(expected.abs().max()):.2f}")
        # bf16 keeps 8 bits of mantissa: compare relative to the logits' size
        assert err <= 0.05 * float(expected.abs().max())
    ours = _greedy(runner, prompts, steps=8)
    for prompt, generated in zip(prompts, ours, strict=True):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([prompt], device="cuda"),
                max_new_tokens=8,
                min_new_tokens=8,
                do_sample=False,
                eos_token_id=None,
            )
        assert generated == ref[0, len(prompt) :].tolist()
