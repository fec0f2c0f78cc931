"""Builds a `CausalLM` on a device and fills it from the checkpoint's safetensors, checking every tensor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from r1serve.checkpoint import CheckpointError, ModelConfig, iter_tensors, weight_files
from r1serve.model.decoder import CausalLM
from r1serve.model.parallel import SINGLE, ColumnParallelLinear, RowParallelLinear, TensorParallel

# fused parameter -> the checkpoint tensors stacked along dim 0, in order
_FUSED = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


@dataclass(frozen=True)
class TensorSlot:
    """Where one checkpoint tensor goes: its (whole) shape, and the piece of it this rank keeps.

    The piece is `length` indices from `offset` along dimension `dim` of the tensor (`dim` None: the
    whole tensor); it fills rows `row, row + 1, ...` of `param`.
    """

    param: torch.Tensor
    shape: tuple[int, ...]
    row: int = 0
    dim: int | None = None
    offset: int = 0
    length: int = 0

    def piece(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.dim is None else tensor.narrow(self.dim, self.offset, self.length)


def _slots(
    module: torch.nn.Module, module_name: str, leaf: str, param: torch.Tensor
) -> dict[str, TensorSlot]:
    """The checkpoint tensors that fill `param`, the parameter `leaf` of `module`."""
    if isinstance(module, ColumnParallelLinear):
        # each fused part (or the one unfused tensor) is split by rows; this rank's rows of every
        # part are stacked in part order
        parent, _, fused = module_name.rpartition(".")
        slots, row = {}, 0
        parts = zip(_FUSED.get(fused, (fused,)), module.parts, module.local_parts, strict=True)
        for part, size, local in parts:
            offset, length, _ = module.tp.shard(size)
            name = f"{parent}.{part}.{leaf}" if parent else f"{part}.{leaf}"
            slots[name] = TensorSlot(param, (size, *param.shape[1:]), row, 0, offset, length)
            row += local
        return slots
    name = f"{module_name}.{leaf}" if module_name else leaf
    if isinstance(module, RowParallelLinear) and leaf == "weight":
        # the input columns are split; a bias is whole
        cols = param.shape[1]
        shape = (param.shape[0], module.full_in_features)
        return {name: TensorSlot(param, shape, 0, 1, module.tp.rank * cols, cols)}
    return {name: TensorSlot(param, tuple(param.shape))}


def checkpoint_layout(model: CausalLM) -> dict[str, TensorSlot]:
    """HF tensor name -> where its piece goes in `model` (this rank's slice, under tensor parallel)."""
    layout: dict[str, TensorSlot] = {}
    for module_name, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            layout |= _slots(module, module_name, leaf, param)
    return layout


def _allocated(config: ModelConfig, tp: TensorParallel, device: torch.device, dtype: torch.dtype) -> CausalLM:
    """The model with its parameters allocated once, in `dtype` on `device`, and not initialised.

    Built on the meta device, then each parameter replaced by `torch.empty`: not `to_empty`, whose
    `empty_like` on a meta tensor is a Python decomposition importing ~500 modules of torch (sympy
    among them) when first used."""
    with torch.device("meta"):
        model = CausalLM(config, tp).to(dtype=dtype)
    if any(True for _ in model.buffers()):  # would stay on the meta device
        raise NotImplementedError("CausalLM has buffers: allocate (and fill) them here too")
    allocated: dict[int, torch.nn.Parameter] = {}  # a parameter shared by two modules stays shared
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) not in allocated:
                empty = torch.empty(param.shape, dtype=param.dtype, device=device)
                allocated[id(param)] = torch.nn.Parameter(empty, requires_grad=False)
            setattr(module, name, allocated[id(param)])
    return model


def load_model(
    model_dir: Path,
    config: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
    tp: TensorParallel = SINGLE,
) -> CausalLM:
    """The model, or this rank's shard of it: every checkpoint tensor is checked whole, then only the
    rank's piece is copied to the device."""
    files = weight_files(model_dir)
    model = _allocated(config, tp, device, dtype)
    layout = checkpoint_layout(model)
    missing = [name for name in layout if name not in files]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{model_dir}: checkpoint lacks tensor {missing[0]}{more}")
    filled: dict[int, int] = {}
    for slot in layout.values():
        rows = slot.length if slot.dim == 0 else slot.shape[0]
        filled[id(slot.param)] = filled.get(id(slot.param), 0) + rows
    with torch.no_grad():
        for param in model.parameters():
            if filled.get(id(param), 0) < param.shape[0]:
                param.zero_()  # padding rows (a vocabulary tp does not divide) must not be garbage
    with Progress(
        TextColumn("loading weights"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task("load", total=len(layout))
        for name, tensor in iter_tensors(files, list(layout)):
            slot = layout[name]
            if tuple(tensor.shape) != slot.shape:
                raise CheckpointError(
                    f"{model_dir}: tensor {name} has shape {list(tensor.shape)}, expected {list(slot.shape)}"
                )
            piece = slot.piece(tensor)
            with torch.no_grad():
                slot.param.narrow(0, slot.row, piece.shape[0]).copy_(piece)
            bar.advance(task)
    # inference only: no autograd graph even where a caller forgets inference_mode (e.g. graph capture)
    return model.eval().requires_grad_(False)
