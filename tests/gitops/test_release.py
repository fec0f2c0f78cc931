"""release.yaml is the whole promotable state: its fields reach the Rollout, the settings ConfigMap
and the download Job, a change to it is a new pod template, and the overlays' JSON patches keep the
base's containers intact (the strategic-merge-on-a-CRD pitfall)."""

from __future__ import annotations

from pathlib import Path

import pytest
from r1ops.render import render_overlay, validate_rendered
from r1ops.validate import load_objects
from ruamel.yaml import YAML

from .conftest import ENVS, find


def _release(repo: Path, env: str) -> dict:
    return YAML(typ="safe").load((repo / "overlays" / env / "release.yaml").read_text())["data"]


def _settings(objs: list[dict]) -> dict:
    rollout = find(objs, "Rollout")
    name = rollout["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    return find(objs, "ConfigMap", name)


@pytest.mark.parametrize("env", ENVS)
def test_release_reaches_rollout_settings_and_download_job(repo_root: Path, objects: dict, env: str) -> None:
    release, objs = _release(repo_root, env), objects[env]
    server = find(objs, "Rollout")["spec"]["template"]["spec"]["containers"][0]
    assert server["image"] == release["image"]
    settings = _settings(objs)["data"]
    assert settings["R1SERVE_SERVED_MODEL_NAME"] == release["model"]
    assert settings["R1SERVE_MODEL_REVISION"] == release["modelRevision"]
    job = find(objs, "Job", "deepseek-r1-model-download")["spec"]["template"]["spec"]["containers"][0]
    env_vars = {e["name"]: e.get("value") for e in job["env"]}
    assert job["image"] == release["image"]
    assert (env_vars["HF_MODEL_ID"], env_vars["HF_MODEL_REVISION"]) == (
        release["model"],
        release["modelRevision"],
    )


def test_release_header_names_the_tools(repo_root: Path) -> None:
    for env in ENVS:
        header = (repo_root / "overlays" / env / "release.yaml").read_text().split("apiVersion")[0]
        assert "r1ops promote" in header and "r1ops bump" in header


def test_a_promotion_is_a_new_pod_template(stack_copy: Path) -> None:
    overlay = stack_copy / "overlays" / "prod"
    before = load_objects(render_overlay(overlay))
    release = overlay / "release.yaml"
    text = (
        release.read_text()
        .replace("r1serve:0.1.0", "r1serve:0.2.0")
        .replace("modelRevision: main", "modelRevision: v2")
    )
    release.write_text(text)
    after = load_objects(render_overlay(overlay))
    assert validate_rendered(render_overlay(overlay)) == []
    server = find(after, "Rollout")["spec"]["template"]["spec"]["containers"][0]
    assert server["image"] == "ghcr.io/example-org/r1serve:0.2.0"
    # The settings ConfigMap name carries a content hash: a model change alone changes the template.
    assert _settings(after)["metadata"]["name"] != _settings(before)["metadata"]["name"]
    assert _settings(after)["data"]["R1SERVE_MODEL_REVISION"] == "v2"


def test_prod_rollout_keeps_every_base_container_field(repo_root: Path, objects: dict) -> None:
    base = load_objects(render_overlay(repo_root / "base"))
    base_containers = find(base, "Rollout")["spec"]["template"]["spec"]["containers"]
    prod_containers = find(objects["prod"], "Rollout")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in prod_containers] == [c["name"] for c in base_containers] == ["server"]
    server = prod_containers[0]
    # A strategic-merge patch without the Rollout schema would have replaced this list with the
    # patch's fragment: probes, ports, mounts and security context would be gone.
    assert server["startupProbe"]["httpGet"] == base_containers[0]["startupProbe"]["httpGet"]
    for field in ("readinessProbe", "livenessProbe", "ports", "securityContext"):
        assert server[field] == base_containers[0][field], field
    for field in ("env", "volumeMounts"):  # components/gpu adds its kernel cache after base's
        assert server[field][: len(base_containers[0][field])] == base_containers[0][field], field
    assert server["image"] == _release(repo_root, "prod")["image"]
    assert server["image"].rsplit(":", 1)[1] == _release(repo_root, "prod")["image"].rsplit(":", 1)[1]
    assert server["resources"]["limits"] == {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "1"}
    assert server["startupProbe"]["failureThreshold"] == 1800


def _arg(analysis: dict, name: str) -> str:
    return next(a["value"] for a in analysis["args"] if a["name"] == name)


def test_environment_thresholds(objects: dict) -> None:
    canary = find(objects["staging"], "Rollout")["spec"]["strategy"]["canary"]
    assert _arg(canary["analysis"], "p99-threshold-seconds") == "20"
    blue_green = find(objects["prod"], "Rollout")["spec"]["strategy"]["blueGreen"]
    assert _arg(blue_green["prePromotionAnalysis"], "p99-threshold-seconds") == "15"
    assert _arg(blue_green["postPromotionAnalysis"], "p99-threshold-seconds") == "15"
    assert blue_green["autoPromotionEnabled"] is False
    dev = find(objects["dev"], "Rollout")["spec"]["strategy"]["canary"]
    assert "analysis" not in dev and all("pause" not in step for step in dev["steps"])


def test_prod_scheduling(objects: dict) -> None:
    spec = find(objects["prod"], "Rollout")["spec"]
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    assert find(objects["prod"], "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


GATEWAY_NAMESPACE_REPLACEMENT = """
  - source: {kind: HTTPRoute, name: deepseek-r1, fieldPath: metadata.namespace}
    targets:
      - select: {kind: Rollout, name: deepseek-r1}
        fieldPaths: [spec.strategy.canary.trafficRouting.plugins.argoproj-labs/gatewayAPI.namespace]
"""


def test_gateway_api_component_composes_with_canary(stack_copy: Path) -> None:
    overlay = stack_copy / "overlays" / "staging"
    kustomization = overlay / "kustomization.yaml"
    kustomization.write_text(
        kustomization.read_text().replace(
            "  - ../../components/canary\n",
            "  - ../../components/canary\n  - ../../components/canary-gateway-api\n",
        )
    )
    # Without the overlay's namespace replacement (see the component's header) the plugin would
    # look for the route in the wrong namespace: validation says so.
    problems = validate_rendered(render_overlay(overlay))
    assert any("gatewayAPI plugin namespace 'set-by-overlay'" in p for p in problems), problems
    with kustomization.open("a") as f:
        f.write(GATEWAY_NAMESPACE_REPLACEMENT)
    text = render_overlay(overlay)
    assert validate_rendered(text) == []
    objs = load_objects(text)
    routing = find(objs, "Rollout")["spec"]["strategy"]["canary"]["trafficRouting"]
    plugin = {"httpRoute": "deepseek-r1", "namespace": "ai-inference-staging"}
    assert routing == {"plugins": {"argoproj-labs/gatewayAPI": plugin}}
    backends = find(objs, "HTTPRoute")["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [
        ("deepseek-r1-stable", 100),
        ("deepseek-r1-canary", 0),
    ]
