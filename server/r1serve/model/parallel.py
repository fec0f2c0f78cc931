"""Tensor parallelism, Megatron style: every rank holds a slice of each large matrix.

A column-parallel linear layer splits its output features across ranks, so each rank computes its
own heads (attention) or its own slice of the MLP's hidden units with no communication; the
row-parallel layer after it splits its input features the same way, so each rank's product is a
partial sum of the full output, and one all-reduce per layer adds them up. Two all-reduces per
decoder layer (after o_proj and after down_proj) and one all-gather of the LM head's vocabulary
slices are the only communication of a step.

With one rank every class here is exactly `nn.Linear` (same parameters, same calls; only the
initialisation is left to the loader), so the single-GPU path is unchanged. Collectives use the
default `torch.distributed` process group: NCCL on CUDA, gloo on the CPU (the tests).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in the tensor-parallel group. `size == 1`: no group, every method a no-op."""

    rank: int = 0
    size: int = 1

    def split(self, total: int, what: str) -> int:
        """`total / size`, or a ValueError naming the quantity that does not split evenly."""
        if total % self.size:
            raise ValueError(f"{what} {total} is not divisible by tensor_parallel_size {self.size}")
        return total // self.size

    def shard(self, total: int) -> tuple[int, int, int]:
        """(first row, rows, padded rows per rank) of this rank's slice of `total` rows. Slices are
        `ceil(total / size)` long; the last ranks' are shorter (or empty) where that overshoots."""
        per_rank = -(-total // self.size)
        start = min(self.rank * per_rank, total)
        return start, min(per_rank, total - start), per_rank

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sums `x` over the ranks, in place."""
        if self.size > 1:
            dist.all_reduce(x)
        return x

    def gather_columns(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """`[rows, shard(total) rows]` on every rank -> `[rows, total]` on every rank (rank order)."""
        if self.size == 1:
            return local
        per_rank = self.shard(total)[2]
        if local.shape[-1] < per_rank:
            local = F.pad(local, (0, per_rank - local.shape[-1]))
        rows = local.shape[0]
        # flat buffers: the one layout both NCCL and gloo accept for all_gather_into_tensor
        out = local.new_empty(self.size * rows * per_rank)
        dist.all_gather_into_tensor(out, local.contiguous().view(-1))
        return out.view(self.size, rows, per_rank).permute(1, 0, 2).reshape(rows, -1)[:, :total]


SINGLE = TensorParallel()


class FilledByLoader:
    """A module whose parameters the loader fills from the checkpoint, every one: construction
    leaves them uninitialised. (Initialising them would only cost start-up time, on the meta device
    the most: its init ops are Python decompositions whose first use imports ~800 modules, which took
    3.5-4.5 s of an H200 host's start-up; docs/PERFORMANCE.md, session 11.)"""

    def reset_parameters(self) -> None:
        pass


class ColumnParallelLinear(FilledByLoader, nn.Linear):
    """Output features split across ranks. `parts` are the full sizes of the fused outputs (q, k, v
    or gate, up): each rank holds its slice of every part, in order, so splitting its output by
    `local_parts` works without communication. A part that does not divide is padded (the LM head's
    vocabulary); the padding rows are zero and their outputs are dropped by the caller."""

    def __init__(self, in_features: int, parts: Sequence[int], *, bias: bool, tp: TensorParallel = SINGLE):
        local_parts = tuple(tp.shard(p)[2] for p in parts)
        super().__init__(in_features, sum(local_parts), bias=bias)
        self.tp = tp
        self.parts = tuple(parts)
        self.local_parts = local_parts


class RowParallelLinear(FilledByLoader, nn.Linear):
    """Input features split across ranks; the partial products are summed by an all-reduce, and the
    bias (whole on every rank) is added once, after it."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, tp: TensorParallel = SINGLE):
        super().__init__(tp.split(in_features, "in_features"), out_features, bias=bias)
        self.tp = tp
        self.full_in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return super().forward(x)
        out = self.tp.all_reduce(F.linear(x, self.weight))
        return out if self.bias is None else out + self.bias


def init_process_group(tp: TensorParallel, store: dist.Store, device: torch.device) -> None:
    """Joins the default process group of `tp.size` ranks (NCCL on CUDA, gloo on the CPU)."""
    cuda = device.type == "cuda"
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        store=store,
        rank=tp.rank,
        world_size=tp.size,
        # the ranks only meet at collectives they all reach together; a long wait means a lost peer
        timeout=datetime.timedelta(minutes=10),
        device_id=device if cuda else None,  # NCCL communicators set up now, not inside a graph capture
    )


def destroy_process_group(abort: bool = False) -> None:
    """Leaves the default group. `abort` first cancels collectives that a dead peer will never join
    (NCCL only; gloo's fail on their own once the peer's socket closes)."""
    if not dist.is_initialized():
        return
    if abort:
        try:
            dist.distributed_c10d._abort_process_group()
            return
        except Exception:  # not supported by this backend: a plain destroy is local anyway
            pass
    dist.destroy_process_group()
