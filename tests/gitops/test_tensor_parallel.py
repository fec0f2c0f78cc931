"""components/gpu and components/tensor-parallel-2: the settings a GPU pod gets, parsed by the server's
own settings model, so a misspelt variable (which the server would ignore) fails here."""

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

    settings = server_settings(objs, monkeypatch)
    assert settings.tensor_parallel_size == 2
    assert settings.device == "cuda"
    assert settings.engine_process  # rank 0 in the engine process, starting the other rank from there


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_gpu_pods_run_the_engine_in_its_own_process_within_the_measured_range(
    objects: dict[str, list[dict]], env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = server_settings(objects[env], monkeypatch)
    assert settings.device == "cuda" and settings.engine_process
    assert settings.async_scheduling  # more tok/s at every level on an H200 (docs/PERFORMANCE.md)
    assert settings.api_servers == 2  # past 64 streams one API process was the bound (docs/PERFORMANCE.md)
    # measured better than the thread up to 64 streams a pod only (docs/PERFORMANCE.md)
    assert settings.max_num_seqs <= 64


def server_settings(objs: list[dict], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The rendered ConfigMap's variables, read the way the server reads them."""
    (settings_map,) = [
        o
        for o in objs
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("deepseek-r1-settings")
    ]
    for key, value in settings_map["data"].items():
        monkeypatch.setenv(key, value)
    return Settings(model=Path("/models/x"))


@pytest.mark.parametrize(("env", "shared"), [("dev", False), ("staging", True), ("prod", True)])
def test_gpu_pods_keep_compiled_kernels_on_a_shared_volume(
    objects: dict[str, list[dict]], env: str, shared: bool
) -> None:
    """A new GPU pod reads the kernels earlier pods compiled (ready in 12.8 s, not 17, on an H200)."""
    pod = find(objects[env], "Rollout", "deepseek-r1")["spec"]["template"]["spec"]
    env_vars = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    if not shared:
        assert "TRITON_CACHE_DIR" not in env_vars and "kernel-cache" not in claims
        return
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "kernel-cache")
    assert env_vars["TRITON_CACHE_DIR"].startswith(mount["mountPath"] + "/") and not mount.get("readOnly")
    claim = find(objects[env], "PersistentVolumeClaim", claims["kernel-cache"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on several nodes at once
