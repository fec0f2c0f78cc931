"""python -m bench.profile_step: where one engine step's GPU time goes, kernel by kernel.

Runs the model runner of a shape (random weights, `/tmp/bench-<shape>` as `python -m bench` writes
it) on synthetic steps and records them with torch.profiler:
- decode steps of 1, 64 and 256 sequences with ~800-token contexts (the offline case's average),
- a mixed step: 64 decodes beside a 512-token prompt chunk (the online case at 64 streams).
The runner is eager (`enforce_eager`), so every kernel is its own profiler record; the same kernels
run inside the CUDA graphs. For each step it prints the GPU time by kernel family (matmuls, attention,
fused elementwise...) and the wall time of the same step replayed from the graphs, so GPU time
against wall time shows what the launches cost.

    PYTHONPATH=server:. python3 -m bench.profile_step [--shape 1.5b] [--context 800]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch
from r1serve.model_runner import ModelRunner, ScheduledSeq
from rich.table import Table
from torch.profiler import ProfilerActivity, profile

from bench import console, shapes

FAMILIES = (  # first match wins: kernel-name fragment -> family
    ("_paged_attention", "attention"),
    ("gemm", "matmul"),
    ("gemv", "matmul"),
    ("cutlass", "matmul"),
    ("nvjet", "matmul"),
    ("_rms_norm", "add + RMSNorm"),
    ("_rope", "rotary + KV store"),
    ("_silu", "SiLU-and-mul"),
    ("copy", "copies / casts"),
    ("index", "gather (last tokens, embedding)"),
)


def family(name: str) -> str:
    low = name.lower()
    return next((f for key, f in FAMILIES if key.lower() in low), "other")


def steps(context: int, blocks: int, block_size: int) -> dict[str, list[ScheduledSeq]]:
    per_seq = -(-(context + 512) // block_size)

    def table(i: int) -> list[int]:
        return [(i * per_seq + j) % blocks for j in range(per_seq)]

    def decodes(n: int) -> list[ScheduledSeq]:
        return [ScheduledSeq([7], context, table(i)) for i in range(n)]

    return {
        "decode b1": decodes(1),
        "decode b64": decodes(64),
        "decode b256": decodes(256),
        "mixed: 64 decodes + 512-token chunk": [*decodes(64), ScheduledSeq([9] * 512, 0, table(64))],
    }


def runner_settings(context: int) -> dict:
    # room for the mixed case's 512-token chunk beside each context (block tables are sized for it)
    return dict(max_model_len=context + 1024, max_num_seqs=256, kv_cache_memory=24 * 2**30, progress=False)


def gpu_kernels(
    runner: ModelRunner, batch: list[ScheduledSeq], iters: int = 5
) -> dict[str, tuple[float, float]]:
    """kernel name -> (launches per step, GPU µs per step)."""
    for _ in range(2):
        runner.run(batch)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            runner.run(batch)
        torch.cuda.synchronize()
    return {
        event.key: (event.count / iters, event.device_time_total / iters)
        for event in prof.key_averages()
        if event.device_type == torch.autograd.DeviceType.CUDA
    }


def by_family(kernels: dict[str, tuple[float, float]]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for name, (_, us) in kernels.items():
        totals[family(name)] += us / 1e3
    return dict(totals)


def print_kernels(case: str, kernels: dict[str, tuple[float, float]]) -> None:
    """Every kernel of one step, costliest first: how many launches a step makes, and their cost."""
    table = Table(title=f"{case}: every kernel of one step (eager)")
    for column in ("kernel", "family", "launches", "µs each", "µs per step"):
        table.add_column(column, justify="left" if column in ("kernel", "family") else "right")
    for name, (count, us) in sorted(kernels.items(), key=lambda kv: -kv[1][1]):
        table.add_row(name[:90], family(name), f"{count:g}", f"{us / count:.2f}", f"{us:.1f}")
    launches = sum(count for count, _ in kernels.values())
    total = sum(us for _, us in kernels.values())
    table.add_row("all", "", f"{launches:g}", f"{total / launches:.2f}", f"{total:.1f}", style="bold")
    console.print(table)


def wall_ms(runner: ModelRunner, batch: list[ScheduledSeq], iters: int = 20) -> float:
    for _ in range(3):
        runner.run(batch)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        runner.run(batch)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_step", description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(shapes.SHAPES), default="1.5b")
    ap.add_argument("--context", type=int, default=800, help="tokens each decoding sequence has cached")
    ap.add_argument("--kernels", action="store_true", help="also list every kernel of the batch-1 step")
    ap.add_argument("--blas", choices=("cublas", "cublaslt"), default="cublas", help="torch's BLAS library")
    args = ap.parse_args()
    torch.backends.cuda.preferred_blas_library(args.blas)
    model_dir = Path(f"/tmp/bench-{args.shape}")
    if not (model_dir / "model.safetensors.index.json").exists():
        shapes.write_checkpoint(model_dir, args.shape)
    common = runner_settings(args.context)
    eager = ModelRunner(model_dir, enforce_eager=True, **common)
    cases = steps(args.context, eager.num_blocks, eager.block_size)
    kernels = {name: gpu_kernels(eager, batch) for name, batch in cases.items()}
    profiles = {name: by_family(k) for name, k in kernels.items()}
    if args.kernels:
        print_kernels("decode b1", kernels["decode b1"])
    walls_eager = {name: wall_ms(eager, batch) for name, batch in cases.items()}
    del eager
    torch.cuda.empty_cache()
    graphs = ModelRunner(model_dir, **common)
    walls_graph = {name: wall_ms(graphs, batch) for name, batch in cases.items()}

    families = {f for p in profiles.values() for f in p}
    names = sorted(families, key=lambda f: -profiles["decode b256"].get(f, 0))
    table = Table(
        title=f"GPU ms per step by kernel family, {args.shape} shape, contexts of {args.context}, {args.blas}"
    )
    table.add_column("kernels")
    for name in cases:
        table.add_column(name, justify="right")
    for f in names:
        table.add_row(f, *(f"{profiles[c].get(f, 0):.3f}" for c in cases))
    table.add_row("GPU total", *(f"{sum(profiles[c].values()):.3f}" for c in cases), style="bold")
    table.add_row("wall, CUDA graphs", *(f"{walls_graph[c]:.3f}" for c in cases))
    table.add_row("wall, eager", *(f"{walls_eager[c]:.3f}" for c in cases))
    console.print(table)


if __name__ == "__main__":
    main()
