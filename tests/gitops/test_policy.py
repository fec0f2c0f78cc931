"""Policies over the rendered overlays: each one holds for the repository's overlays and catches the
mistake it exists for."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
from r1ops import policy
from r1ops.render import render_overlay
from r1ops.validate import load_objects

from .conftest import ENVS, find


def _server(objs: list[dict]) -> dict:
    return find(objs, "Rollout")["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("env", ENVS)
def test_overlays_pass_every_policy(objects: dict, env: str) -> None:
    assert policy.policy_problems(objects[env]) == []


@pytest.mark.parametrize(("env", "gpus"), [("dev", None), ("staging", "1"), ("prod", "1")])
def test_gpu_requests_follow_the_environment(objects: dict, env: str, gpus: str | None) -> None:
    resources = _server(objects[env])["resources"]
    assert resources["limits"].get("nvidia.com/gpu") == gpus
    assert resources["requests"].get("nvidia.com/gpu") == gpus


@pytest.mark.parametrize(
    "image", ["ghcr.io/example-org/r1serve:0.1.0", "localhost:5000/r1serve:1", "r1@sha256:" + "a" * 64]
)
def test_pinned_images(image: str) -> None:
    assert policy.image_pinned(image) is None


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("ghcr.io/example-org/r1serve", "no tag or digest"),
        ("ghcr.io/example-org/r1serve:latest", ":latest"),
        ("localhost:5000/r1serve", "no tag or digest"),
    ],
)
def test_unpinned_images(image: str, why: str) -> None:
    assert why in (policy.image_pinned(image) or "")


def _break(objs: list[dict], edit: Callable[[list[dict]], None]) -> list[str]:
    broken = copy.deepcopy(objs)
    edit(broken)
    return policy.policy_problems(broken)


def _set_server(key: str, value: object) -> Callable[[list[dict]], None]:
    return lambda objs: _server(objs).__setitem__(key, value)


def _drop_gpu(objs: list[dict]) -> None:
    for part in ("limits", "requests"):
        del _server(objs)["resources"][part]["nvidia.com/gpu"]


def _drop_service(objs: list[dict]) -> None:
    objs.remove(find(objs, "Service", "deepseek-r1-preview"))


def _mislabel_service(objs: list[dict]) -> None:
    find(objs, "Service", "deepseek-r1")["spec"]["selector"]["app.kubernetes.io/component"] = "web"


def _drop_arg(objs: list[dict]) -> None:
    args = find(objs, "Rollout")["spec"]["strategy"]["blueGreen"]["prePromotionAnalysis"]["args"]
    args[:] = [a for a in args if a["name"] != "preview-url"]


def _drop_relabel(objs: list[dict]) -> None:
    find(objs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["relabelings"].pop(0)


def _short_grace(objs: list[dict]) -> None:
    find(objs, "Rollout")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30


def _root_job(objs: list[dict]) -> None:
    job = find(objs, "Job")["spec"]["template"]["spec"]
    job["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True


def _token(objs: list[dict]) -> None:
    template = find(objs, "AnalysisTemplate", "inference-preview-load")
    template["spec"]["metrics"][0]["provider"]["job"]["spec"]["template"]["spec"].pop(
        "automountServiceAccountToken"
    )


def _load_test_without_key(objs: list[dict]) -> None:
    template = find(objs, "AnalysisTemplate", "inference-preview-load")
    locust = template["spec"]["metrics"][0]["provider"]["job"]["spec"]["template"]["spec"]["containers"][0]
    locust["env"] = [e for e in locust["env"] if e["name"] != "LOCUST_API_KEY"]


def _namespace_not_kept(objs: list[dict]) -> None:
    find(objs, "Namespace")["metadata"].pop("annotations")


def _host_path(objs: list[dict]) -> None:
    volumes = find(objs, "Rollout")["spec"]["template"]["spec"]["volumes"]
    volumes.append({"name": "models-on-node", "hostPath": {"path": "/models"}})


def _open_all_ports(objs: list[dict]) -> None:
    find(objs, "NetworkPolicy")["spec"]["ingress"][0].pop("ports")


def _no_prometheus(objs: list[dict]) -> None:
    rule = find(objs, "NetworkPolicy")["spec"]["ingress"][0]
    rule["from"] = [peer for peer in rule["from"] if "namespaceSelector" not in peer]


def _no_budget(objs: list[dict]) -> None:
    objs.remove(find(objs, "PodDisruptionBudget"))


def _no_strategy(objs: list[dict]) -> None:
    find(objs, "Rollout")["spec"]["strategy"] = {}


def _kernel_cache_mount(objs: list[dict]) -> dict:
    mounts = _server(objs)["volumeMounts"]
    return next(m for m in mounts if m["name"] == "kernel-cache")


def _kernel_cache_on_tmp(objs: list[dict]) -> None:
    env = _server(objs)["env"]
    next(e for e in env if e["name"] == "TRITON_CACHE_DIR")["value"] = "/tmp/.cache/triton"


def _read_only_kernel_claim(objs: list[dict]) -> None:
    volumes = find(objs, "Rollout")["spec"]["template"]["spec"]["volumes"]
    next(v for v in volumes if v["name"] == "kernel-cache")["persistentVolumeClaim"]["readOnly"] = True


def _kernel_claim_rwo(objs: list[dict]) -> None:
    find(objs, "PersistentVolumeClaim", "deepseek-r1-kernel-cache")["spec"]["accessModes"] = ["ReadWriteOnce"]


def _no_kernel_cache(objs: list[dict]) -> None:
    env = _server(objs)["env"]
    env.remove(next(e for e in env if e["name"] == "TRITON_CACHE_DIR"))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_set_server("image", "ghcr.io/example-org/r1serve:latest"), "uses :latest"),
        (_set_server("readinessProbe", None), "no readinessProbe"),
        (_set_server("startupProbe", None), "no startupProbe"),
        (_set_server("resources", {"limits": {"cpu": "1"}}), "no requests for cpu, memory"),
        (_set_server("securityContext", {}), "allowPrivilegeEscalation is not false"),
        (_drop_gpu, "R1SERVE_DEVICE=cuda but no nvidia.com/gpu limit"),
        (_drop_service, "previewService deepseek-r1-preview is not rendered"),
        (_mislabel_service, "Service deepseek-r1 selector"),
        (_drop_arg, "inference-preview-load needs arg 'preview-url'"),
        (_drop_relabel, "no PodMonitor keeps rollouts_pod_template_hash"),
        (_short_grace, "terminationGracePeriodSeconds 30 < preStop 10s + drain 300s"),
        (
            _root_job,
            "Job/ai-inference-prod/deepseek-r1-model-download: container download: allowPrivilegeEscalation",
        ),
        (_token, "inference-preview-load metric preview-load: automountServiceAccountToken is not false"),
        (_namespace_not_kept, "Delete=false, but Namespace ai-inference-prod has no Delete=false"),
        (_load_test_without_key, "LOCUST_API_KEY does not come from Secret deepseek-r1-api-key key api-key"),
        (_no_strategy, "no canary or blueGreen strategy"),
        (_host_path, "volume models-on-node is a hostPath"),
        (_open_all_ports, "NetworkPolicy deepseek-r1 opens all ports"),
        (_no_prometheus, "NetworkPolicy deepseek-r1 shuts out Prometheus"),
        (_no_budget, "no PodDisruptionBudget covers its pods"),
        (_set_server("securityContext", {"privileged": True}), "container server: privileged"),
        (_no_kernel_cache, "R1SERVE_DEVICE is cuda but TRITON_CACHE_DIR is not set"),
        (_kernel_cache_on_tmp, "on volume tmp, not a PersistentVolumeClaim"),
        (
            lambda objs: _kernel_cache_mount(objs).__setitem__("readOnly", True),
            "TRITON_CACHE_DIR /var/cache/r1serve/triton is not on a writable volume",
        ),
        (_read_only_kernel_claim, "TRITON_CACHE_DIR /var/cache/r1serve/triton is not on a writable volume"),
        (_kernel_claim_rwo, "kernel cache claim deepseek-r1-kernel-cache is not ReadWriteMany"),
    ],
)
def test_policy_catches(objects: dict, edit: Callable[[list[dict]], None], expected: str) -> None:
    problems = _break(objects["prod"], edit)
    assert any(expected in p for p in problems), problems


def test_kernel_cache_rules_look_at_the_server_container_only(objects: dict) -> None:
    def add_sidecar(objs: list[dict]) -> None:
        spec = find(objs, "Rollout")["spec"]["template"]["spec"]
        spec["containers"].append(
            {
                **copy.deepcopy(spec["containers"][0]),
                "name": "proxy",
                "envFrom": [],
                "env": [],
                "volumeMounts": [],
            }
        )

    def from_secret(objs: list[dict]) -> None:
        env = _server(objs)["env"]
        entry = next(e for e in env if e["name"] == "TRITON_CACHE_DIR")
        entry.pop("value")
        entry["valueFrom"] = {"configMapKeyRef": {"name": "elsewhere", "key": "dir"}}

    for edit in (add_sidecar, from_secret):  # a sidecar without R1SERVE_DEVICE; a value not rendered
        assert not [p for p in _break(objects["prod"], edit) if "TRITON_CACHE_DIR" in p or "kernel" in p]


def test_cpu_server_holding_a_gpu_is_flagged(objects: dict) -> None:
    def add_gpu(objs: list[dict]) -> None:
        _server(objs)["resources"]["limits"]["nvidia.com/gpu"] = "1"

    assert any("R1SERVE_DEVICE=cpu but holds 1 GPU" in p for p in _break(objects["dev"], add_gpu))


def test_templates_run_together_agree_on_defaults(objects: dict) -> None:
    def disagree(objs: list[dict]) -> None:
        args = find(objs, "AnalysisTemplate", "inference-preview-load")["spec"]["args"]
        next(a for a in args if a["name"] == "max-error-rate")["value"] = "0.05"

    problems = _break(objects["prod"], disagree)
    expected = (
        "arg 'max-error-rate' defaults to '0.05' in inference-preview-load but '0.01' in inference-error-rate"
    )
    assert any(expected in p for p in problems), problems


def test_canary_arguments_are_checked_too(objects: dict) -> None:
    def drop(objs: list[dict]) -> None:
        analysis = find(objs, "Rollout")["spec"]["strategy"]["canary"]["analysis"]
        analysis["args"] = [a for a in analysis["args"] if a["name"] != "stable-hash"]

    assert any(
        "inference-p99-vs-stable needs arg 'stable-hash'" in p for p in _break(objects["staging"], drop)
    )


def test_standalone_load_test_jobs_read_the_servers_key(objects: dict, repo_root: Path) -> None:
    """loadtests/k8s renders without the server; its Jobs must read the Secret the overlays' server reads."""
    server = [o for o in objects["prod"] if o.get("kind") == "Rollout"]
    for tree in ("preview-job", "distributed"):
        jobs = load_objects(render_overlay(repo_root / "loadtests" / "k8s" / tree))
        assert [o for o in jobs if o.get("kind") == "Job"]
        assert policy.check_load_test_key(server + jobs) == []
        keyless = copy.deepcopy(jobs)
        for job in keyless:
            for c in job.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                c["env"] = [e for e in c.get("env") or [] if e["name"] != "LOCUST_API_KEY"]
        assert policy.check_load_test_key(server + keyless)
