"""python -m bench.profile_step runs on the GPU machine only; its synthetic steps and kernel families
are checked here, so a call there does not fail on them (one did: block tables wider than the
runner allowed at a 4,000-token context)."""

from __future__ import annotations

import pytest
from r1serve.packed_step import pack

from bench import console
from bench.profile_step import by_family, family, print_kernels, runner_settings, steps


@pytest.mark.parametrize("context", [800, 4000])
def test_every_step_packs_within_the_runners_limits(context: int) -> None:
    settings = runner_settings(context)
    blocks = 50_000
    for name, batch in steps(context, blocks, block_size=16).items():
        step = pack(
            batch, block_size=16, num_blocks=blocks, max_model_len=settings["max_model_len"], vocab_size=100
        )
        width = -(-settings["max_model_len"] // 16)  # the decode graphs' block-table width
        assert all(len(s.block_table) <= width for s in batch), name
        assert step.count == len(batch) <= settings["max_num_seqs"], name


def test_kernel_names_fall_into_families() -> None:
    assert family("_paged_attention_kernel") == "attention"
    assert family("nvjet_tst_128x64_64x4_1x2_h_bz_TNT") == "matmul"
    assert family("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert family("_rms_norm_kernel") == "add + RMSNorm"
    assert family("_rope_store_kv_kernel") == "rotary + KV store"
    assert family("void at::native::elementwise_kernel<copy>") == "copies / casts"
    assert family("_merge_splits") == "other"


def test_the_kernel_list_adds_up_per_family_and_in_all() -> None:
    kernels = {
        "nvjet_sm90_tst_192x8": (28.0, 486.0),
        "_rms_norm_kernel": (57.0, 97.0),
        "_merge_splits": (28.0, 58.0),
    }
    assert by_family(kernels) == {"matmul": 0.486, "add + RMSNorm": 0.097, "other": 0.058}
    with console.capture() as out:
        print_kernels("decode b1", kernels)
    total = next(line for line in out.get().splitlines() if "all" in line)
    assert "113" in total and "641.0" in total  # launches and µs per step of the three
