"""The small building blocks of the decoder: the token embedding, RMSNorm and the SwiGLU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from r1serve.model import triton_fused
from r1serve.model.parallel import (
    SINGLE,
    ColumnParallelLinear,
    FilledByLoader,
    RowParallelLinear,
    TensorParallel,
)


class Embedding(FilledByLoader, nn.Embedding):
    """`nn.Embedding`, its table left for the loader to fill."""


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if triton_fused.supports(x):
            return triton_fused.rms_norm(x, self.weight, self.eps)
        # normalise in float32 and cast back before the weight, exactly like transformers
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + x), residual + x): the residual stream's add and the next norm. On the GPU
        one launch that updates `residual` in place; the sum is rounded to the dtype first, exactly
        like transformers' `hidden = residual + hidden`."""
        if triton_fused.supports(x):
            return triton_fused.add_rms_norm(x, residual, self.weight, self.eps)
        residual = residual + x
        return self(residual), residual


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), gate and up fused into one matmul. Tensor parallel: each rank
    holds its slice of the gate rows and the same slice of the up rows, so silu-and-mul is local."""

    def __init__(self, hidden_size: int, intermediate_size: int, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        tp.split(intermediate_size, "intermediate_size")
        self.gate_up_proj = ColumnParallelLinear(
            hidden_size, [intermediate_size, intermediate_size], bias=False, tp=tp
        )
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=False, tp=tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if triton_fused.supports(gate_up):
            return self.down_proj(triton_fused.silu_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
