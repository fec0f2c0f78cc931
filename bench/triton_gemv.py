"""Skinny matmul for decode steps: `x @ weight.T (+ bias) (+ residual)` for 1 to 16 rows of x.

An experiment that `python -m bench.gemv` reproduces, not server code: on the H200 it did not beat
cuBLAS in a 28-layer 1.5B decode stack (1.335 against 1.321 ms a step, the fused kernels on both
sides; per matrix it won only o_proj at 1 and 4 rows and the LM head by ~5%), and some
of its split-K configs did not round the exact product once on the GPU. The server uses cuBLAS and
the fused elementwise kernels (`r1serve.model.triton_fused`).

At batch 1-16 a decode step's matmuls read every weight once and do almost no arithmetic, so their
time is the time to stream the weights from HBM; cuBLAS reaches ~59% of the copy bandwidth there
(docs/PERFORMANCE.md). This kernel is built only to stream: each program owns BLOCK_N weight rows and
walks them along K (the contiguous dimension) in wide loads that bypass L2 retention. A matrix with
few rows (o_proj: 1536 rows for 132 SMs) also splits K over SPLIT_K programs; each writes an fp32
partial, and the last program of a tile to arrive (an atomic counter) sums the partials in split
order and writes the result. That is one launch and deterministic, where atomically adding floats
into the output would make the sums, and so greedy outputs, depend on scheduling.

The bias and the residual stream are added in the epilogue, so o_proj and down_proj need no separate
add. Accumulation is fp32 with one rounding at the end, like cuBLAS; with a residual the matmul is
rounded first, exactly like `residual + F.linear(x, weight)`.

Configs are timed per (device, rows rounded up to a power of two, N, K, dtype) on the first call
that is not under CUDA-graph capture (bench.gemv makes one before capturing). Nothing is timed
or compiled under capture (a kernel's first launch loads its module, which CUDA forbids while a
stream is capturing), so a shape first seen under capture falls back to cuBLAS.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
    from triton.runtime.errors import OutOfResources
except ImportError:  # CPU-only installs
    triton = None

log = logging.getLogger(__name__)

MAX_ROWS = 16
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# per-tile arrival counters of split-K launches: enough for 152064 rows in tiles of 16
_NUM_LOCKS = 1 << 14
_TIMING_REPS = 12


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `gemv` serves this matmul: CUDA, 1-16 rows, matching bf16/fp16/fp32, K contiguous."""
    return (
        triton is not None
        and x.is_cuda
        and weight.is_cuda
        and x.dim() == 2
        and weight.dim() == 2
        and 1 <= x.shape[0] <= MAX_ROWS
        and x.shape[1] == weight.shape[1]
        and x.dtype == weight.dtype
        and x.dtype in _DTYPES
        and weight.stride(1) == 1
    )


@dataclass(frozen=True)
class GemvConfig:
    block_n: int  # weight rows (outputs) per program
    block_k: int  # weight columns per loop step
    split_k: int = 1  # programs sharing one tile's K range
    num_warps: int = 4
    num_stages: int = 3
    # tensor-core tl.dot over the rows of x padded to 16; False: fp32 FMA, for one row of x only
    dot: bool = True

    def __str__(self) -> str:
        kind = "dot" if self.dot else "fma"
        return (
            f"{kind} n{self.block_n} k{self.block_k} split{self.split_k} w{self.num_warps} s{self.num_stages}"
        )


if triton is not None:

    @triton.jit
    def _epilogue(
        total, offs_n, offs_m, M, N, b_ptr, r_ptr, out_ptr, stride_rm, stride_om, has_bias, has_residual
    ):  # fmt: skip
        """Adds bias and residual to the fp32 tile `total` [BLOCK_N, BLOCK_M] and stores out[m, n]."""
        dtype = out_ptr.dtype.element_ty
        if has_bias != 0:
            total += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[:, None]
        mask = (offs_n[:, None] < N) & (offs_m[None, :] < M)
        if has_residual != 0:
            residual = tl.load(r_ptr + offs_m[None, :] * stride_rm + offs_n[:, None], mask=mask, other=0.0)
            total = total.to(dtype).to(tl.float32) + residual.to(tl.float32)
        tl.store(out_ptr + offs_m[None, :] * stride_om + offs_n[:, None], total.to(dtype), mask=mask)

    # runtime values that would otherwise multiply compilations (Triton specialises ints equal to 1)
    @triton.jit(do_not_specialize=["M", "split_k", "steps_per_split", "has_bias", "has_residual"])
    def _gemv_kernel(
        x_ptr, w_ptr, b_ptr, r_ptr, out_ptr, part_ptr, lock_ptr,
        M, N, K, split_k, steps_per_split,
        stride_xm, stride_wn, stride_rm, stride_om,
        has_bias, has_residual,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        DOT: tl.constexpr, EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):  # fmt: skip
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_k = tl.arange(0, BLOCK_K)
        # weight rows past N re-read valid rows rather than masking every load; the store drops them
        w_ptrs = w_ptr + (offs_n % N).to(tl.int64)[:, None] * stride_wn + offs_k[None, :]
        # the padding rows of x (up to 16 for tl.dot) are masked: zero-filled, never fetched
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
        in_m = offs_m[:, None] < M
        # in whole steps, so the compiler knows every k is a multiple of BLOCK_K (aligned wide loads)
        k_start = pid_k * steps_per_split * BLOCK_K
        k_end = tl.minimum(k_start + steps_per_split * BLOCK_K, K)
        if DOT:  # noqa: SIM108 (statements, not a ternary: each branch is compiled only if taken)
            acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
        else:
            acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        for k in range(k_start, k_end, BLOCK_K):
            if EVEN_K:
                w = tl.load(w_ptrs + k, eviction_policy="evict_first")
                x = tl.load(x_ptrs + k, mask=in_m, other=0.0)
            else:
                in_k = (k + offs_k)[None, :] < K
                w = tl.load(w_ptrs + k, mask=in_k, other=0.0, eviction_policy="evict_first")
                x = tl.load(x_ptrs + k, mask=in_m & in_k, other=0.0)
            if DOT:
                acc = tl.dot(w, tl.trans(x), acc, input_precision=DOT_PRECISION)
            else:
                acc += w.to(tl.float32) * x.to(tl.float32)
        if DOT:  # noqa: SIM108
            total = acc
        else:
            total = tl.sum(acc, 1)[:, None]

        if split_k == 1:
            _epilogue(total, offs_n, offs_m, M, N, b_ptr, r_ptr, out_ptr, stride_rm, stride_om,
                      has_bias, has_residual)  # fmt: skip
        else:
            # partials: [split_k, tiles * BLOCK_N, BLOCK_M] float32, every tile fully written
            tile = offs_n[:, None] * BLOCK_M + offs_m[None, :]
            stride_split = tl.num_programs(0) * BLOCK_N * BLOCK_M
            tl.store(part_ptr + pid_k * stride_split + tile, total)
            # All threads' partials are stored before one thread moves the counter (acq_rel, GPU
            # scope: a release for this program's stores, an acquire of the others' for the last).
            tl.debug_barrier()
            arrived = tl.atomic_add(lock_ptr + pid_n, 1)
            if arrived == split_k - 1:
                total = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
                for s in range(split_k):
                    # .cg reads L2, where the other SMs' partials are, never a stale L1 line
                    total += tl.load(part_ptr + s * stride_split + tile, cache_modifier=".cg")
                tl.atomic_xchg(lock_ptr + pid_n, 0)  # ready for the next launch or graph replay
                _epilogue(total, offs_n, offs_m, M, N, b_ptr, r_ptr, out_ptr, stride_rm, stride_om,
                          has_bias, has_residual)  # fmt: skip


class _DeviceBuffers:
    """Per-device zeroed split-K counters and a dummy fp32 pointer, allocated outside graph capture.
    Every launch leaves the counters at zero, and launches on a stream run in order, so all gemv calls
    share them."""

    def __init__(self, device: torch.device) -> None:
        self.locks = torch.zeros(_NUM_LOCKS, dtype=torch.int32, device=device)
        self.no_partials = torch.empty(1, dtype=torch.float32, device=device)


_buffers: dict[torch.device, _DeviceBuffers] = {}


def _device_buffers(device: torch.device) -> _DeviceBuffers:
    buffers = _buffers.get(device)
    if buffers is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("gemv's first call on a device must come before CUDA-graph capture")
        buffers = _buffers[device] = _DeviceBuffers(device)
    return buffers


def _launcher(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    cfg: GemvConfig,
) -> Callable[[], torch.Tensor]:
    """Checks the arguments and allocates the output once; the returned function only launches."""
    if x.stride(1) != 1:
        x = x.contiguous()
    m, k = x.shape
    n = weight.shape[0]
    if not 1 <= m <= MAX_ROWS or weight.shape[1] != k or weight.stride(1) != 1 or weight.dtype != x.dtype:
        raise ValueError(f"gemv takes x [1..{MAX_ROWS}, K] and a row-major weight [N, K] of x's dtype")
    if not cfg.dot and m != 1:
        raise ValueError("the FMA variant takes one row of x")
    if bias is not None and (bias.shape != (n,) or not bias.is_contiguous()):
        raise ValueError(f"bias must be a contiguous [{n}]")
    if residual is not None and (residual.shape != (m, n) or residual.stride(1) != 1):
        raise ValueError(f"residual must be [{m}, {n}] with contiguous rows")
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    buffers = _device_buffers(x.device)
    block_m = 16 if cfg.dot else 1
    tiles = triton.cdiv(n, cfg.block_n)
    steps_per_split = triton.cdiv(triton.cdiv(k, cfg.block_k), cfg.split_k)
    if cfg.split_k > 1:
        if tiles > _NUM_LOCKS:
            raise ValueError(f"{tiles} tiles exceed the {_NUM_LOCKS} split-K counters")
        size = cfg.split_k * tiles * cfg.block_n * block_m
        partials = torch.empty(size, dtype=torch.float32, device=x.device)
    else:
        partials = buffers.no_partials
    grid = (tiles, cfg.split_k)
    args = (
        x,
        weight,
        weight if bias is None else bias,  # never read without a bias; any pointer of the dtype does
        out if residual is None else residual,
        out,
        partials,
        buffers.locks,
        m,
        n,
        k,
        cfg.split_k,
        steps_per_split,
        x.stride(0),
        weight.stride(0),
        0 if residual is None else residual.stride(0),
        out.stride(0),
        int(bias is not None),
        int(residual is not None),
    )
    meta = dict(
        BLOCK_M=block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        DOT=cfg.dot,
        EVEN_K=k % cfg.block_k == 0,
        # float32 gets exact float32 products, as F.linear does without TF32
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )

    def launch() -> torch.Tensor:
        _gemv_kernel[grid](*args, **meta)
        return out

    return launch


# (BLOCK_N, BLOCK_K, num_warps, num_stages, dot): few, because each is a compilation at start-up
_TILES = (
    (32, 256, 4, 3, True),
    (64, 256, 8, 3, True),
    (16, 512, 4, 3, True),
    (32, 256, 4, 1, False),
    (16, 512, 4, 1, False),
)
_SPLITS = (1, 2, 3, 4, 6, 8, 12, 16)


def _splits(n: int, k: int, block_n: int, block_k: int, sms: int) -> list[int]:
    """Split-K factors worth trying: each split keeps at least one BLOCK_K step, and there is no point
    in more than ~4 programs per SM."""
    tiles = triton.cdiv(n, block_n)
    k_steps = triton.cdiv(k, block_k)
    return [s for s in _SPLITS if s == 1 or (s <= k_steps and tiles * s <= 4 * sms)]


def candidates(m: int, n: int, k: int, sms: int) -> list[GemvConfig]:
    """The configs timed for an [m, k] x [n, k]^T matmul on a card with `sms` SMs."""
    return [
        GemvConfig(bn, bk, split, warps, stages, dot)
        for bn, bk, warps, stages, dot in _TILES
        if dot or m == 1
        for split in _splits(n, k, bn, bk, sms)
    ]


def heuristic(m: int, n: int, k: int, sms: int) -> GemvConfig:
    """An untimed config: FMA for one row, tensor cores for more, split until one wave fills the SMs."""
    bn, bk, warps, stages, dot = _TILES[3] if m == 1 else _TILES[0]
    tiles = triton.cdiv(n, bn)
    splits = _splits(n, k, bn, bk, sms)
    split = next((s for s in splits if tiles * s >= sms), splits[-1])
    return GemvConfig(bn, bk, split, warps, stages, dot)


_autotune = True
_chosen: dict[tuple, GemvConfig] = {}
timings: dict[tuple, list[tuple[GemvConfig, float]]] = {}  # key -> (config, µs) of every timed candidate


def set_autotune(enabled: bool) -> None:
    """Off: every shape gets the heuristic config (no timing, fewer compilations at start-up)."""
    global _autotune
    _autotune = enabled


def tune_key(x: torch.Tensor, weight: torch.Tensor) -> tuple:
    return (x.device, triton.next_power_of_2(x.shape[0]), weight.shape[0], weight.shape[1], x.dtype)


def _time_us(launch: Callable[[], torch.Tensor], flush: torch.Tensor) -> float:
    """Median µs of one launch with a cold L2. The flush ahead of each run keeps the GPU busy (~0.1
    ms) while the host enqueues the events and the launch, so the events time the kernel alone."""
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(_TIMING_REPS)
    ]
    for start, end in events:
        flush.zero_()
        start.record()
        launch()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events) * 1e3


def _tune(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None
) -> GemvConfig:
    (m, k), n = x.shape, weight.shape[0]
    props = torch.cuda.get_device_properties(x.device)
    # written before each timed run, so the weight comes from HBM, not L2, as in a real step
    flush_bytes = max(2 * getattr(props, "L2_cache_size", 0), 256 * 2**20)
    flush = torch.empty(flush_bytes, dtype=torch.int8, device=x.device)
    results = []
    for cfg in candidates(m, n, k, props.multi_processor_count):
        launch = _launcher(x, weight, bias, residual, cfg)
        try:
            launch()  # compiles on first use of these constexprs
        except OutOfResources as e:  # e.g. the stages do not fit in shared memory on this card
            log.debug("gemv config %s skipped: %s", cfg, e)
            continue
        results.append((cfg, _time_us(launch, flush)))
    del flush
    best, us = min(results, key=lambda r: r[1])
    timings[tune_key(x, weight)] = results
    nbytes = weight.numel() * weight.element_size()
    log.info("gemv M=%d N=%d K=%d: %s, %.1f µs (%.0f GB/s)", m, n, k, best, us, nbytes / us / 1e3)
    return best


def config_for(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> GemvConfig | None:
    """The config `gemv` uses for these arguments, timed (or, with autotune off, chosen) on the
    first call outside graph capture; None under capture for a shape never seen before."""
    (m, k), n = x.shape, weight.shape[0]
    if not x.is_cuda:  # the Triton interpreter (tests): nothing to time
        return heuristic(m, n, k, sms=4)
    key = tune_key(x, weight)
    cfg = _chosen.get(key)
    if cfg is None and not torch.cuda.is_current_stream_capturing():
        if _autotune:
            cfg = _tune(x, weight, bias, residual)
        else:
            cfg = heuristic(m, n, k, torch.cuda.get_device_properties(x.device).multi_processor_count)
        _chosen[key] = cfg
    return cfg


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    config: GemvConfig | None = None,
) -> torch.Tensor:
    """`x @ weight.T (+ bias) (+ residual)` for x [M <= 16, K], weight [N, K] row-major; returns a new
    [M, N] tensor of x's dtype. `config` pins a config (tests, benchmarks) instead of the tuned one."""
    if config is None:
        config = config_for(x, weight, bias, residual)
    if config is None:
        log.warning(
            "gemv %s x %s first seen under CUDA-graph capture: cuBLAS", tuple(x.shape), tuple(weight.shape)
        )
        out = F.linear(x, weight, bias)
        return out if residual is None else residual + out
    return _launcher(x, weight, bias, residual, config)()
