"""python -m bench.gemv: the decode step's skinny matmuls, cuBLAS against the experimental Triton GEMV
(`bench/triton_gemv.py`), and a 28-layer decode stack with cuBLAS or the GEMV and with or without the
fused elementwise kernels (`triton_fused.add_rms_norm`, `rope_store_kv`), each replayed from a CUDA
graph. The server uses cuBLAS plus the fused kernels: on the H200 the GEMV did not beat cuBLAS in the
stack (1.335 against 1.321 ms a step with the fused kernels on both sides; per matrix it won only
o_proj at 1 and 4 rows and the LM head by ~5%).

bash bench/device.sh python3 -m bench.gemv --out "$OUT"      (on the GPU machine, see README.md)

A matmul case replays a graph of back-to-back calls over different copies of the weight, at least
4x the L2 cache in all, so the weights stream from HBM as in a real step. Bytes counted: weight +
bias + x + output. Bandwidth is compared with a device-to-device copy measured in the same run. A
case that fails is reported and skipped; the run goes on.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from r1serve.checkpoint import RopeConfig
from r1serve.model import triton_fused
from r1serve.model.attention import store_kv
from r1serve.model.rotary import inverse_frequencies
from rich.table import Table

from bench import console, hardware, shapes, triton_gemv

DTYPE = torch.bfloat16
DEVICE = "cuda"


def matmul_shapes(cfg: dict) -> dict[str, tuple[int, int, bool]]:
    """name -> (N, K, bias) of one layer's fused matmuls and the LM head."""
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    return {
        "qkv_proj": (q + 2 * kv, h, True),
        "o_proj": (h, q, False),
        "gate_up_proj": (2 * inter, h, False),
        "down_proj": (h, inter, False),
        "lm_head": (cfg["vocab_size"], h, False),
    }


def graph_us(fn: Callable[[], object], calls: int, replays: int = 20) -> float:
    """Median µs per call of `fn`, which makes `calls` calls, replayed from one CUDA graph."""
    fn()  # outside capture: compilation, and gemv's tuning
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del graph
    return statistics.median(times) * 1e3 / calls


def free_gpu() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def run_case(label: str, fn: Callable[[], dict]) -> dict:
    """One case; a failure becomes an `error` entry instead of ending the run."""
    console.print(f"[dim]{label}[/dim]")
    try:
        return fn()
    except Exception as e:
        console.print(f"[red]{label} failed: {e!r}[/red]")
        return {"case": label, "error": repr(e), "traceback": traceback.format_exc()}
    finally:
        free_gpu()


def gemv_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if triton_gemv.supports(x, weight):
        return triton_gemv.gemv(x, weight, bias)
    return F.linear(x, weight, bias)


# ------------------------------------------------------------------------------------------------
# one matmul, cuBLAS against the experimental triton_gemv


def matmul_case(label: str, n: int, k: int, bias: bool, m: int, l2_bytes: int, copy_bw: float) -> dict:
    weight_bytes = n * k * DTYPE.itemsize
    copies = max(2, math.ceil(4 * l2_bytes / weight_bytes))
    calls = max(20, copies)
    weights = [torch.randn(n, k, device=DEVICE, dtype=DTYPE) * 0.02 for _ in range(copies)]
    b = torch.randn(n, device=DEVICE, dtype=DTYPE) * 0.1 if bias else None
    x = torch.randn(m, k, device=DEVICE, dtype=DTYPE)
    cublas_us = graph_us(lambda: [F.linear(x, weights[i % copies], b) for i in range(calls)], calls)
    triton_us = graph_us(lambda: [triton_gemv.gemv(x, weights[i % copies], b) for i in range(calls)], calls)
    want = F.linear(x, weights[0], b).float()
    diff = float((triton_gemv.gemv(x, weights[0], b).float() - want).abs().max() / want.abs().max())
    moved = weight_bytes + (n if bias else 0) * DTYPE.itemsize + (m * k + m * n) * DTYPE.itemsize
    tuned = triton_gemv.timings.get(triton_gemv.tune_key(x, weights[0]), [])
    return {
        "case": label,
        "M": m,
        "N": n,
        "K": k,
        "cublas_us": cublas_us,
        "triton_us": triton_us,
        "speedup": cublas_us / triton_us,
        "cublas_gb_s": moved / cublas_us / 1e3,
        "triton_gb_s": moved / triton_us / 1e3,
        "cublas_of_copy_bw": moved / cublas_us * 1e6 / copy_bw,
        "triton_of_copy_bw": moved / triton_us * 1e6 / copy_bw,
        "max_rel_diff_vs_cublas": diff,
        "config": str(triton_gemv.config_for(x, weights[0], b)),
        "weight_copies": copies,
        # every candidate the tuner timed (one call, cold L2), best first
        "tuning_us": {str(c): round(us, 2) for c, us in sorted(tuned, key=lambda r: r[1])},
    }


# ------------------------------------------------------------------------------------------------
# a decode stack: norm -> qkv -> rope + KV store -> [attention skipped] -> o_proj -> residual + norm
#                 -> gate_up -> silu_mul -> down -> residual + norm, for every layer, then the LM head


@dataclass
class Layer:
    in_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor


@dataclass
class Stack:
    cfg: dict
    rows: int
    layers: list[Layer]
    final_norm: torch.Tensor
    lm_head: torch.Tensor
    h0: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    inv_freq: torch.Tensor

    @classmethod
    def random(cls, cfg: dict, rows: int, num_layers: int, device: str = "cuda") -> Stack:
        sizes = matmul_shapes(cfg)
        hidden = cfg["hidden_size"]
        head_dim = hidden // cfg["num_attention_heads"]
        block_size = 16
        blocks = -(-rows // block_size)

        def w(name: str) -> torch.Tensor:
            n, k, _ = sizes[name]
            return torch.randn(n, k, device=device, dtype=DTYPE) * 0.02

        def norm() -> torch.Tensor:
            return torch.rand(hidden, device=device, dtype=DTYPE) + 0.5

        def cache() -> torch.Tensor:
            shape = (blocks, block_size, cfg["num_key_value_heads"], head_dim)
            return torch.zeros(shape, device=device, dtype=DTYPE)

        layers = [
            Layer(
                norm(),
                w("qkv_proj"),
                torch.randn(sizes["qkv_proj"][0], device=device, dtype=DTYPE) * 0.1,
                w("o_proj"),
                norm(),
                w("gate_up_proj"),
                w("down_proj"),
                cache(),
                cache(),
            )
            for _ in range(num_layers)
        ]
        return cls(
            cfg=cfg,
            rows=rows,
            layers=layers,
            final_norm=norm(),
            lm_head=w("lm_head"),
            h0=torch.randn(rows, hidden, device=device, dtype=DTYPE),
            positions=torch.arange(rows, device=device) + 100,
            slots=torch.arange(rows, device=device),
            inv_freq=inverse_frequencies(head_dim, RopeConfig(theta=cfg["rope_theta"])).to(device),
        )

    def weight_bytes(self, head: bool) -> int:
        """Weight bytes a step reads (the KV caches are not weights)."""
        tensors = [
            t for layer in self.layers for name, t in vars(layer).items() if not name.endswith("cache")
        ]
        tensors += [self.final_norm] + ([self.lm_head] if head else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def step(
        self,
        linear: Callable,
        fused_rope: bool,
        residual: str,
        head: bool,
        before: Callable[[str, int], None] | None = None,
    ) -> torch.Tensor:
        """One decode step through every layer. `residual`: "add" (`h + linear(...)`, then RMSNorm),
        "epilogue" (gemv adds it, then RMSNorm) or "add_rms_norm" (the fused add + norm). `before(name,
        i)` runs before layer i's matmul `name` (qkv, o, gate_up, down) is launched."""
        if before is None:
            before = lambda name, i: None  # noqa: E731
        cfg = self.cfg
        heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        head_dim = cfg["hidden_size"] // heads
        eps = cfg["rms_norm_eps"]

        def add_norm(inp: torch.Tensor, weight: torch.Tensor, h: torch.Tensor, norm: torch.Tensor):
            if residual == "add_rms_norm":
                return triton_fused.add_rms_norm(linear(inp, weight), h, norm, eps)
            if residual == "epilogue" and triton_gemv.supports(inp, weight):
                h = triton_gemv.gemv(inp, weight, residual=h)
            else:
                h = h + linear(inp, weight)
            return triton_fused.rms_norm(h, norm, eps), h

        h = self.h0.clone()  # add_rms_norm updates it in place; every replay starts from h0
        x = triton_fused.rms_norm(h, self.layers[0].in_norm, eps)
        for i, layer in enumerate(self.layers):
            before("qkv", i)
            qkv = linear(x, layer.qkv, layer.qkv_bias)
            if fused_rope:
                q = triton_fused.rope_store_kv(
                    qkv, self.positions, self.inv_freq, layer.k_cache, layer.v_cache, self.slots,
                    heads, kv_heads, head_dim,
                )  # fmt: skip
            else:
                q, k, v = (
                    t.unflatten(1, (-1, head_dim))
                    for t in qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], -1)
                )
                triton_fused.rope_(q, k, self.positions, self.inv_freq)
                store_kv(k, v, layer.k_cache, layer.v_cache, self.slots)
            attention = q.flatten(1)  # attention itself is not what this measures
            before("o", i)
            x, h = add_norm(attention, layer.o, h, layer.post_norm)
            following = self.layers[i + 1].in_norm if i + 1 < len(self.layers) else self.final_norm
            before("gate_up", i)
            gated = triton_fused.silu_mul(linear(x, layer.gate_up))
            before("down", i)
            x, h = add_norm(gated, layer.down, h, following)
        return linear(x, self.lm_head) if head else x


VARIANTS: dict[str, tuple[Callable, bool, str]] = {
    "unfused (session 1): cuBLAS, rope + index_put, separate adds": (F.linear, False, "add"),
    "cuBLAS + rope_store_kv + add_rms_norm": (F.linear, True, "add_rms_norm"),
    "gemv, rest unfused": (gemv_linear, False, "add"),
    "gemv + rope_store_kv + residual epilogue": (gemv_linear, True, "epilogue"),
    "gemv + rope_store_kv + add_rms_norm": (gemv_linear, True, "add_rms_norm"),
}


def stack_cases(cfg: dict, shape: str, rows: int, num_layers: int, copy_bw: float) -> list[dict]:
    stack = Stack.random(cfg, rows, num_layers, DEVICE)
    results = []
    reference: dict[bool, torch.Tensor] = {}
    for head in (False, True):
        for name, (linear, fused_rope, residual) in VARIANTS.items():

            def case(name=name, linear=linear, fused_rope=fused_rope, residual=residual, head=head) -> dict:
                def step() -> torch.Tensor:
                    return stack.step(linear, fused_rope, residual, head)

                ms = graph_us(step, calls=1) / 1e3
                out = step().float()
                want = reference.setdefault(head, out)
                nbytes = stack.weight_bytes(head)
                return {
                    "case": f"{shape} x{num_layers} layers" + (" + LM head" if head else ""),
                    "variant": name,
                    "M": rows,
                    "ms_per_step": ms,
                    "gb_s": nbytes / ms / 1e6,
                    "of_copy_bw": nbytes / (ms / 1e3) / copy_bw,
                    "weight_gb": nbytes / 1e9,
                    "rel_diff_vs_today": float((out - want).norm() / want.norm()),
                }

            results.append(run_case(f"stack {shape} M={rows} head={head}: {name}", case))
    return results


# ------------------------------------------------------------------------------------------------


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    t = Table(title=title)
    for key in columns:
        t.add_column(key, justify="right")
    for row in rows:
        if "error" in row:
            t.add_row(row["case"], f"[red]{row['error'][:80]}[/red]", *[""] * (len(columns) - 2))
            continue
        cells = (row.get(key, "") for key in columns)
        t.add_row(*(f"{v:,.3f}" if isinstance(v, float) else str(v) for v in cells))
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.gemv")
    ap.add_argument("--shapes", default="1.5b,7b", help="comma list of bench/shapes.py shapes")
    ap.add_argument("--rows", default="1,4,16", help="rows of x (batch) for the matmul cases")
    ap.add_argument("--stack-shape", default="1.5b")
    ap.add_argument("--stack-rows", default="1", help="rows (batch) of the decode-stack cases")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("python -m bench.gemv: needs a CUDA GPU (see bench/README.md)")
    unknown = {*args.shapes.split(","), args.stack_shape} - set(shapes.SHAPES)
    if unknown:
        ap.error(f"unknown shapes {sorted(unknown)}; bench/shapes.py has {sorted(shapes.SHAPES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    props = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(props, "L2_cache_size", 50 * 2**20)
    copy_bw = hardware.copy_bandwidth()
    result: dict = {
        "hardware": hardware.describe() | {"l2_mib": l2_bytes / 2**20, "copy_bandwidth_gb_s": copy_bw / 1e9},
        "command": vars(args) | {"out": str(args.out)},
    }
    console.print(result["hardware"])
    path = args.out / "gemv.json"

    def save() -> None:  # after each part, so a later failure keeps what was measured
        path.write_text(json.dumps(result, indent=2))

    matmuls = []
    for shape in args.shapes.split(","):
        for name, (n, k, bias) in matmul_shapes(shapes.SHAPES[shape]).items():
            for m in (int(r) for r in args.rows.split(",")):
                label = f"{shape} {name} M={m}"
                case = partial(matmul_case, f"{shape} {name}", n, k, bias, m, l2_bytes, copy_bw)
                row = run_case(label, case)
                row.setdefault("M", m)
                matmuls.append(row)
                if "error" not in row:
                    console.print(
                        f"  cuBLAS {row['cublas_us']:.1f} µs ({row['cublas_of_copy_bw']:.0%}), "
                        f"triton {row['triton_us']:.1f} µs ({row['triton_of_copy_bw']:.0%}), {row['config']}"
                    )
    result["matmuls"] = matmuls
    save()
    print_table(
        f"skinny matmuls, bf16, µs per call from a CUDA graph (copy bandwidth {copy_bw / 1e9:,.0f} GB/s)",
        matmuls,
        ["case", "M", "cublas_us", "triton_us", "speedup", "cublas_of_copy_bw", "triton_of_copy_bw",
         "max_rel_diff_vs_cublas", "config"],
    )  # fmt: skip

    stacks = []
    cfg = shapes.SHAPES[args.stack_shape]
    for rows in (int(r) for r in args.stack_rows.split(",")):
        build = partial(stack_cases, cfg, args.stack_shape, rows, args.layers, copy_bw)
        built = run_case(f"decode stack {args.stack_shape} M={rows}", lambda: {"rows": build()})  # noqa: B023
        stacks += built.get("rows", [built])
    result["stacks"] = stacks
    print_table(
        "decode stack, one CUDA graph per variant (attention skipped)",
        stacks,
        ["case", "variant", "M", "ms_per_step", "gb_s", "of_copy_bw", "rel_diff_vs_today"],
    )
    save()
    timed_stacks = [r for r in stacks if "ms_per_step" in r]
    for case, rows in sorted({(r["case"], r["M"]) for r in timed_stacks}):
        timed = [r for r in timed_stacks if (r["case"], r["M"]) == (case, rows)]
        today, best = timed[0], min(timed, key=lambda r: r["ms_per_step"])
        console.print(
            f"{case}, M={rows}: {today['variant']} {today['ms_per_step']:.3f} ms "
            f"({today['of_copy_bw']:.0%} of copy bandwidth) -> {best['variant']} "
            f"{best['ms_per_step']:.3f} ms ({best['of_copy_bw']:.0%})"
        )
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
