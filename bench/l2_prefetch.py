"""python -m bench.l2_prefetch: can the decode step's small matmuls read their weights from L2?

At batch 1 cuBLAS reads `qkv_proj` (6.3 MB) and `o_proj` (4.7 MB) of the 1.5B shape at 17-29% of the
copy bandwidth (`bench.gemv`): a matrix that small is over before the reads reach full speed. The
H200's L2 holds 60 MB. This experiment pulls a matmul's weights into L2 while the kernels before it
run, on a side stream forked inside the same CUDA graph, so the matmul itself reads from L2. The
bytes read from HBM are the same; the reads move off the critical path.

Two parts:
- each matmul of a 1.5B layer at batch 1, µs per call from a CUDA graph of back-to-back calls, with
  its weight hot in L2 (the same tensor every call) and streamed from HBM (as many copies as 4x
  the L2): what a perfect prefetch could give each matmul;
- over `bench.gemv`'s 28-layer decode stack (cuBLAS + the server's fused kernels, attention skipped,
  LM head included), ms per step with no prefetch (`today`, the server now) and with prefetches,
  by Hopper's bulk L2 prefetch (`cp.async.bulk.prefetch.L2`, one instruction per chunk, no SM work)
  or by plain loads that keep the lines (`evict_last`), on the side stream or in line.

On an H200 (docs/PERFORMANCE.md, session 12) a perfect prefetch would save at most ~5% of the step,
and every prefetch tried made it slower: the server does not prefetch.

    bash bench/device.sh python3 -m bench.l2_prefetch --out "$OUT"    (on the GPU machine)
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from bench import console, hardware, shapes
from bench.gemv import DTYPE, Stack, graph_us, matmul_shapes, print_table, run_case

BULK_LANES = 128  # one bulk prefetch per thread of one 4-warp program


@triton.jit
def _bulk_prefetch_kernel(base, nbytes, chunk, sink_ptr, LANES: tl.constexpr):
    lane = tl.arange(0, LANES).to(tl.int64)
    start = lane * chunk
    size = tl.minimum(tl.maximum(nbytes - start, 0), chunk)
    addr = tl.where(size > 0, base + start, base)  # a lane past the end prefetches the first 16 bytes
    size = tl.where(size > 0, size, 16).to(tl.int32)
    done = tl.inline_asm_elementwise(
        "cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.u32 $0, 0;",
        "=r,l,r",
        [addr, size],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )
    tl.store(sink_ptr + lane, done)


@triton.jit
def _load_prefetch_kernel(ptr, n, sink_ptr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for start in tl.range(pid * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc ^= tl.load(ptr + offs, mask=offs < n, other=0, eviction_policy="evict_last")
    tl.store(sink_ptr + pid * BLOCK + tl.arange(0, BLOCK), acc)  # kept, so the loads are too


LOAD_PROGRAMS, LOAD_BLOCK = 16, 2048


class Prefetch:
    """`before` hook of `Stack.step`: at a matmul, prefetch the tensors the schedule names."""

    def __init__(
        self, kind: str, schedule: dict[str, Callable[[int], list[torch.Tensor]]], side: bool
    ) -> None:
        self.kind, self.schedule = kind, schedule
        self.side = torch.cuda.Stream() if side else None
        self.sink = torch.zeros(LOAD_PROGRAMS * LOAD_BLOCK, dtype=torch.int32, device="cuda")

    def _prefetch(self, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        if self.kind == "bulk":
            chunk = -(-nbytes // BULK_LANES // 16) * 16  # 16-byte multiples, as the instruction needs
            _bulk_prefetch_kernel[(1,)](t.data_ptr(), nbytes, chunk, self.sink, LANES=BULK_LANES, num_warps=4)
        else:
            words = t.view(-1).view(torch.int32)
            _load_prefetch_kernel[(LOAD_PROGRAMS,)](words, words.numel(), self.sink, BLOCK=LOAD_BLOCK)

    def __call__(self, name: str, i: int) -> None:
        tensors = self.schedule[name](i) if name in self.schedule else []
        if not tensors:
            return
        if self.side is None:
            for t in tensors:
                self._prefetch(t)
            return
        ready = torch.cuda.Event()
        ready.record()
        self.side.wait_event(ready)
        with torch.cuda.stream(self.side):
            for t in tensors:
                self._prefetch(t)

    def join(self) -> None:
        if self.side is not None:
            torch.cuda.current_stream().wait_stream(self.side)


def schedules(stack: Stack) -> dict[str, dict[str, Callable[[int], list[torch.Tensor]]]]:
    layers = stack.layers

    def following_qkv(i: int) -> list[torch.Tensor]:
        return [layers[i + 1].qkv] if i + 1 < len(layers) else []

    small = {"qkv": lambda i: [layers[i].o], "down": following_qkv}
    return {
        "o during qkv, next qkv during down": small,
        "+ down during gate_up": small | {"gate_up": lambda i: [layers[i].down]},
        "+ half of down during gate_up": small
        | {"gate_up": lambda i: [layers[i].down[: len(layers[i].down) // 2]]},
    }


@contextlib.contextmanager
def blas(library: str) -> Iterator[None]:
    """torch's BLAS library for the matmuls in the block ("cublas" is the default)."""
    default = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(library)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(default)


def hot_and_cold_us(n: int, k: int, bias: bool, l2_bytes: int) -> dict[str, float]:
    """µs per batch-1 call of an (n, k) matmul: its weight hot in L2, and streamed from HBM, through
    torch's default BLAS path; streamed also with a zero bias (cuBLASLt's bias epilogue, other
    heuristics) and with cuBLASLt preferred for every matmul."""
    copies = max(2, -(-4 * l2_bytes // (n * k * DTYPE.itemsize)))
    weights = [torch.randn(n, k, device="cuda", dtype=DTYPE) * 0.02 for _ in range(copies)]
    b = torch.randn(n, device="cuda", dtype=DTYPE) if bias else None
    zero = torch.zeros(n, device="cuda", dtype=DTYPE)
    x = torch.randn(1, k, device="cuda", dtype=DTYPE)
    calls = max(20, copies)
    times = {
        "hot_us": graph_us(lambda: [F.linear(x, weights[0], b) for _ in range(calls)], calls),
        "cold_us": graph_us(lambda: [F.linear(x, weights[i % copies], b) for i in range(calls)], calls),
    }
    if not bias:
        times["cold_zero_bias_us"] = graph_us(
            lambda: [F.linear(x, weights[i % copies], zero) for i in range(calls)], calls
        )
    with blas("cublaslt"):
        times["cold_cublaslt_us"] = graph_us(
            lambda: [F.linear(x, weights[i % copies], b) for i in range(calls)], calls
        )
    return times


def hot_and_cold(cfg: dict, l2_bytes: int, copy_bw: float) -> list[dict]:
    """Each matmul of a layer at batch 1, its weight hot in L2 and streamed from HBM."""
    rows = []
    for name, (n, k, bias) in matmul_shapes(cfg).items():
        if name == "lm_head":
            continue
        times = hot_and_cold_us(n, k, bias, l2_bytes)
        torch.cuda.empty_cache()
        mb = n * k * DTYPE.itemsize / 1e6
        rows.append(
            {"matmul": name, "MB": mb, **times, "cold_of_copy_bw": mb * 1e12 / times["cold_us"] / copy_bw}
        )
    return rows


def cases(cfg: dict, shape: str, rows: int, layers: int, copy_bw: float) -> list[dict]:
    stack = Stack.random(cfg, rows, layers)
    nbytes = stack.weight_bytes(head=True)
    # name -> (prefetch, BLAS library for every matmul)
    variants: dict[str, tuple[Prefetch | None, str]] = {
        "today": (None, "cublas"),
        "today, cuBLASLt for every matmul": (None, "cublaslt"),
    }
    for label, schedule in schedules(stack).items():
        variants[f"bulk, side stream: {label}"] = (Prefetch("bulk", schedule, side=True), "cublas")
    first = next(iter(schedules(stack).values()))
    variants["bulk, in line: o during qkv, next qkv during down"] = (
        Prefetch("bulk", first, side=False),
        "cublas",
    )
    variants["loads, side stream: o during qkv, next qkv during down"] = (
        Prefetch("load", first, side=True),
        "cublas",
    )

    results, reference = [], None
    for repeat in (1, 2):  # twice, interleaved, so drift between variants shows
        for name, (prefetch, library) in variants.items():

            def case(
                prefetch: Prefetch | None = prefetch,
                library: str = library,
                name: str = name,
                repeat: int = repeat,
            ) -> dict:
                def step() -> torch.Tensor:
                    out = stack.step(F.linear, True, "add_rms_norm", True, before=prefetch)
                    if prefetch is not None:
                        prefetch.join()
                    return out

                with blas(library):
                    ms = graph_us(step, calls=1) / 1e3
                    out = step().float()
                    torch.cuda.synchronize()
                nonlocal reference
                if name == "today":
                    reference = out
                diff = (
                    float((out - reference).norm() / reference.norm())
                    if reference is not None
                    else float("nan")
                )
                return {
                    "case": f"{shape} x{layers} + LM head, M={rows}",
                    "variant": name,
                    "repeat": repeat,
                    "ms_per_step": ms,
                    "of_copy_bw": nbytes / (ms / 1e3) / copy_bw,
                    "rel_diff_vs_today": diff,  # a prefetch changes no result: 0
                }

            results.append(run_case(f"M={rows} {name} ({repeat})", case))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.l2_prefetch")
    ap.add_argument("--shape", default="1.5b", choices=sorted(shapes.SHAPES))
    ap.add_argument("--rows", default="1,64", help="rows (batch) of the decode stack")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("python -m bench.l2_prefetch: needs a CUDA GPU (see bench/README.md)")
    args.out.mkdir(parents=True, exist_ok=True)
    copy_bw = hardware.copy_bandwidth()
    props = torch.cuda.get_device_properties(0)
    result: dict = {
        "hardware": hardware.describe()
        | {"l2_mib": props.L2_cache_size / 2**20, "copy_bandwidth_gb_s": copy_bw / 1e9},
        "command": vars(args) | {"out": str(args.out)},
        "stacks": [],
    }
    path = args.out / "l2-prefetch.json"
    result["matmuls"] = hot_and_cold(shapes.SHAPES[args.shape], props.L2_cache_size, copy_bw)
    print_table(
        f"{args.shape}, batch 1: µs per matmul, weight hot in L2 or streamed from HBM",
        result["matmuls"],
        ["matmul", "MB", "hot_us", "cold_us", "cold_of_copy_bw", "cold_zero_bias_us", "cold_cublaslt_us"],
    )
    path.write_text(json.dumps(result, indent=2))
    for rows in (int(r) for r in args.rows.split(",")):
        result["stacks"] += cases(shapes.SHAPES[args.shape], args.shape, rows, args.layers, copy_bw)
        path.write_text(json.dumps(result, indent=2))
    print_table(
        f"decode stack, {args.shape}, ms per step from one CUDA graph "
        f"(copy bandwidth {copy_bw / 1e9:,.0f} GB/s)",
        result["stacks"],
        ["case", "variant", "repeat", "ms_per_step", "of_copy_bw", "rel_diff_vs_today"],
    )
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
