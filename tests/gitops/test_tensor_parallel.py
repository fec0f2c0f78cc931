"""components/tensor-parallel-2: two GPUs per pod, and a setting name the server really reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from r1ops.render import render_overlay, validate_rendered
from r1serve.config import Settings

from .conftest import find


def test_prod_with_two_gpus_per_pod(stack_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kustomization = stack_copy / "overlays" / "prod" / "kustomization.yaml"
    gpu = "  - ../../components/gpu\n"
    text = kustomization.read_text()
    assert gpu in text
    kustomization.write_text(text.replace(gpu, gpu + "  - ../../components/tensor-parallel-2\n"))

    rendered = render_overlay(stack_copy / "overlays" / "prod")
    assert validate_rendered(rendered) == []  # schemas and the restricted pod-security policies
    objs = [d for d in yaml.safe_load_all(rendered) if d]
    server = find(objs, "Rollout", "deepseek-r1")["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert server["resources"]["requests"]["nvidia.com/gpu"] == "2"

    (settings_map,) = [
        o
        for o in objs
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("deepseek-r1-settings")
    ]
    # the server reads these variables through its own settings model: parse them the same way
    for key, value in settings_map["data"].items():
        monkeypatch.setenv(key, value)
    settings = Settings(model=Path("/models/x"))
    assert settings.tensor_parallel_size == 2
    assert settings.device == "cuda"
