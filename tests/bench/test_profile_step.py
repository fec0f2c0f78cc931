"""python -m bench.profile_step runs on the GPU machine only; its synthetic steps and kernel families
are checked here, so a call there does not fail on them (one did: block tables wider than the
runner allowed at a 4,000-token context)."""

from __future__ import annotations

import pytest
from r1serve.packed_step import pack

from bench.profile_step import family, runner_settings, steps


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
