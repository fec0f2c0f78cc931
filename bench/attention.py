"""python -m bench.attention: the Triton paged attention kernel against the PyTorch reference path.

One call is one layer's attention over a whole engine step; "ms/step" multiplies by the shape's
layer count. Cases, for each DeepSeek-R1-Distill-Qwen shape:
- mixed: one fresh 1024-token prompt chunk beside 63 decodes of ~600-token contexts (the step that
  set the online ITL P99: the reference pads all 64 sequences to 1024 queries);
- prefill: 8 fresh 512-token prompts;
- decode: 64 decodes of ~600-token contexts, 256 of 100-1,500 (the offline case) and 64 of ~4,000
  (R1-length reasoning), through the decode form (what CUDA graphs capture) and the varlen form, to
  show what folding decode into the varlen launch would cost. "KV TB/s": the cache bytes of the
  contexts over the time, to set beside the card's copy bandwidth.
The reference's padded layout and mask are built once per step and shared by all layers, so they
are built before timing. Blocks are shuffled, as in a server that has run a while.

    PYTHONPATH=server:. python3 -m bench.attention [--shape 1.5b,7b] [--sweep] [--cases decode]
    [--baseline-decode OLD_triton_attention.py]

`--sweep` also times other launch shapes of both forms (the decode form's tile and context splits);
`--baseline-decode` times the `paged_decode_attention` of another copy of the module (e.g. `git show
REV:server/r1serve/model/triton_attention.py > /tmp/old.py`) on the decode cases, to compare a
change of the decode kernel.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from r1serve.model.attention import AttentionMetadata, reference_paged_attention
from r1serve.model.triton_attention import (
    DECODE_TILE,
    TileConfig,
    paged_decode_attention,
    paged_varlen_attention,
)
from rich.table import Table

from bench import console
from bench.shapes import SHAPES

PAGE = 16


@dataclass
class Step:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    meta: AttentionMetadata


def metadata(
    start_pos: list[int], query_lens: list[int], tables: torch.Tensor, device: torch.device | str
) -> AttentionMetadata:
    """The step's metadata as ModelRunner builds it (the cache is filled already: no slots)."""
    context = [s + n for s, n in zip(start_pos, query_lens, strict=True)]
    cu = [0]
    for n in query_lens:
        cu.append(cu[-1] + n)
    return AttentionMetadata(
        slot_mapping=torch.empty(0, dtype=torch.int64, device=device),
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        start_pos=torch.tensor(start_pos, device=device),
        context_lens=torch.tensor(context, device=device),
        block_tables=tables.to(device),
        max_query_len=max(query_lens),
        max_context_len=max(context),
    )


def random_step(
    seqs: list[tuple[int, int]],
    heads: int,
    kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device | str,
    seed: int = 0,
) -> Step:
    """A step of (start_pos, query_len) sequences with random queries and caches. Each sequence's
    blocks are shuffled and non-contiguous, with unused blocks between them, and the tables are
    padded past the longest context, as the runner's are. Shared with the kernel's tests."""
    gen = torch.Generator().manual_seed(seed)
    blocks = [-(-(s + n) // PAGE) for s, n in seqs]
    num_blocks = 2 * sum(blocks) + 3
    order = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    tables = torch.zeros(len(blocks), max(blocks) + 2, dtype=torch.int32)
    used = 0
    for i, n in enumerate(blocks):
        tables[i, :n] = order[used : used + n]
        used += 2 * n
    dev_gen = torch.Generator(device=device).manual_seed(seed)
    shape = (num_blocks, PAGE, kv_heads, head_dim)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=dev_gen, device=device, dtype=torch.float32).to(dtype)

    return Step(
        q=randn(sum(n for _, n in seqs), heads, head_dim),
        k_cache=randn(*shape),
        v_cache=randn(*shape),
        meta=metadata([s for s, _ in seqs], [n for _, n in seqs], tables, device),
    )


def cases(rng: random.Random) -> dict[str, list[tuple[int, int]]]:
    decodes = [(rng.randint(500, 700), 1) for _ in range(64)]
    return {
        "mixed: 1x1024 prompt + 63 decodes (ctx ~600)": [(0, 1024), *decodes[:63]],
        "prefill: 8x512 fresh prompts": [(0, 512)] * 8,
        "decode: 64 decodes (ctx ~600)": decodes,
        # the offline case's decode steps, and R1-length reasoning
        "decode: 256 decodes (ctx 100-1500)": [(rng.randint(100, 1500), 1) for _ in range(256)],
        "decode: 64 decodes (ctx ~4000)": [(rng.randint(3800, 4200), 1) for _ in range(64)],
    }


def varlen(step: Step, tile: TileConfig | None = None) -> Callable[[], torch.Tensor]:
    m = step.meta
    return lambda: paged_varlen_attention(
        step.q, step.k_cache, step.v_cache, m.block_tables, m.cu_seqlens_q, m.start_pos, m.max_query_len, tile
    )


def sweep_tiles(heads: int, kv_heads: int) -> list[TileConfig]:
    group_pad = 1 << (heads // kv_heads - 1).bit_length()  # the kernel pads the GQA group to it
    return [
        TileConfig(block_q=q, block_n=n, num_warps=w, num_stages=s)
        for q, n, w, s in itertools.product((1, 2, 4, 8, 16, 32), (32, 64), (4, 8), (2, 3))
        if 16 <= q * group_pad <= 256
    ]


def sweep_decode() -> list[tuple[TileConfig, int]]:
    """(launch shape, context splits; 0 = decode_splits' choice) of the decode form."""
    tiles = [
        (TileConfig(block_q=1, block_n=n, num_warps=w, num_stages=s), 0)
        for n, w, s in itertools.product((32, 64, 128), (2, 4, 8), (2, 3, 4))
    ]
    return tiles + [(DECODE_TILE, splits) for splits in (1, 2, 4, 8)]


def kv_bytes(step: Step) -> int:
    """Cache bytes a step's attention reads once: K and V of every sequence's context."""
    per_token = 2 * step.k_cache[0, 0].numel() * step.k_cache.element_size()
    return int(step.meta.context_lens.sum()) * per_token


def gpu_ms(fn: Callable[[], torch.Tensor], iters: int) -> tuple[float, str]:
    """GPU milliseconds of one call, and how they were taken: `iters` calls captured in one CUDA
    graph and replayed, so the Python launch cost is not counted (captured decode steps do not pay
    it, and it would swamp a small kernel); a path that cannot be captured runs back to back."""
    for _ in range(3):  # warm-up: compilation, autotuning caches, allocator
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(iters):
                fn()
        run, how = graph.replay, "graph"
    except RuntimeError:
        torch.cuda.synchronize()
        run, how = (lambda: [fn() for _ in range(iters)]), "eager"
    run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters, how


def tile_label(t: TileConfig) -> str:
    return f"block_q {t.block_q}, block_n {t.block_n}, {t.num_warps} warps, {t.num_stages} stages"


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location("baseline_attention", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.attention")
    ap.add_argument("--shape", default="1.5b,7b", help=f"comma list of {sorted(SHAPES)}")
    ap.add_argument("--iters", type=int, default=20, help="calls per timing (one CUDA graph)")
    ap.add_argument("--sweep", action="store_true", help="also time other launch shapes of both forms")
    ap.add_argument("--cases", default="", help="comma list: only the cases whose name contains one")
    ap.add_argument("--baseline-decode", type=Path, help="a triton_attention.py to time on the decode cases")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("python -m bench.attention: needs a CUDA GPU (see bench/README.md)")
    baseline = load_module(args.baseline_decode) if args.baseline_decode else None
    table = Table(title=f"paged attention, one layer, bf16, {torch.cuda.get_device_name()}")
    columns = ("shape", "case", "path", "ms/call (layer)", "ms/step", "x reference", "KV TB/s", "rel. error")
    columns += ("timed",)
    for col in columns:
        table.add_column(col, justify="left" if col in ("shape", "case", "path", "timed") else "right")

    for shape in args.shape.split(","):
        cfg = SHAPES[shape]
        heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        head_dim, layers = cfg["hidden_size"] // heads, cfg["num_hidden_layers"]
        for name, seqs in cases(random.Random(0)).items():
            if args.cases and not any(c in name for c in args.cases.split(",")):
                continue
            console.log(f"{shape}: {name}")
            step = random_step(seqs, heads, kv_heads, head_dim, torch.bfloat16, "cuda")
            m = step.meta
            _ = m.reference_layout  # built once per step in the server
            default_tile = TileConfig.for_step(m.max_query_len, heads // kv_heads, head_dim)
            qkv = (step.q, step.k_cache, step.v_cache)
            paths: dict[str, Callable[[], torch.Tensor]] = {
                "reference (padded SDPA)": partial(reference_paged_attention, *qkv, m),
                f"triton varlen ({tile_label(default_tile)})": varlen(step),
            }
            if m.max_query_len == 1:
                decode_args = (*qkv, m.block_tables, m.context_lens)
                paths["triton decode"] = partial(paged_decode_attention, *decode_args)
                if baseline is not None:
                    paths["baseline decode"] = partial(baseline.paged_decode_attention, *decode_args)
            if args.sweep and m.max_query_len > 1:
                paths |= {f"  varlen {tile_label(t)}": varlen(step, t) for t in sweep_tiles(heads, kv_heads)}
            if args.sweep and m.max_query_len == 1:
                paths |= {
                    f"  decode {tile_label(t)}, splits {n or 'auto'}": partial(
                        paged_decode_attention, *decode_args, n, t
                    )
                    for t, n in sweep_decode()
                }
            want = next(iter(paths.values()))().float()
            ref_ms = None
            for label, fn in paths.items():
                try:
                    ms, how = gpu_ms(fn, args.iters)
                    rel = float((fn().float() - want).norm() / want.norm())
                except Exception as e:  # a swept shape that does not compile (shared memory)
                    table.add_row(shape, name, label, type(e).__name__)  # rich fills the other cells
                    continue
                ref_ms = ref_ms or ms
                tb_s = kv_bytes(step) / ms / 1e9
                cells = (f"{ms:.3f}", f"{ms * layers:.2f}", f"{ref_ms / ms:.1f}", f"{tb_s:.2f}", f"{rel:.1e}")
                table.add_row(shape, name, label, *cells, how)
            del step
            torch.cuda.empty_cache()
    console.print(table)


if __name__ == "__main__":
    main()
