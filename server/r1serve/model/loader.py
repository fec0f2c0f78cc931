"""Builds a `CausalLM` on a device and fills it from the checkpoint's safetensors, checking every tensor."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from r1serve.checkpoint import CheckpointError, ModelConfig, iter_tensors, weight_files
from r1serve.model.decoder import CausalLM

# fused parameter -> the checkpoint tensors stacked along dim 0, in order
_FUSED = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


def checkpoint_layout(model: CausalLM) -> dict[str, tuple[torch.Tensor, int, int]]:
    """HF tensor name -> (our parameter, first row, row count) that tensor fills."""
    cfg = model.config
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    rows = {
        "q_proj": q,
        "k_proj": kv,
        "v_proj": kv,
        "gate_proj": cfg.intermediate_size,
        "up_proj": cfg.intermediate_size,
    }
    layout: dict[str, tuple[torch.Tensor, int, int]] = {}
    for name, param in model.named_parameters():
        fused = next((f for f in _FUSED if f".{f}." in name), None)
        if fused is None:
            layout[name] = (param, 0, param.shape[0])
            continue
        start = 0
        for part in _FUSED[fused]:
            layout[name.replace(fused, part)] = (param, start, rows[part])
            start += rows[part]
    return layout


def load_model(
    model_dir: Path, config: ModelConfig, device: torch.device, dtype: torch.dtype, progress: bool = True
) -> CausalLM:
    files = weight_files(model_dir)
    # built on the meta device so the weights are allocated once, directly on the target device
    with torch.device("meta"):
        model = CausalLM(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    layout = checkpoint_layout(model)
    missing = [name for name in layout if name not in files]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{model_dir}: checkpoint lacks tensor {missing[0]}{more}")
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
            param, start, count = layout[name]
            expected = (count, *param.shape[1:])
            if tuple(tensor.shape) != expected:
                raise CheckpointError(
                    f"{model_dir}: tensor {name} has shape {list(tensor.shape)}, expected {list(expected)}"
                )
            with torch.no_grad():
                param.narrow(0, start, count).copy_(tensor)
            bar.advance(task)
    # inference only: no autograd graph even where a caller forgets inference_mode (e.g. graph capture)
    return model.eval().requires_grad_(False)
