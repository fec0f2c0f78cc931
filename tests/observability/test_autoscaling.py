"""KEDA autoscaling as the overlays render it: the Rollout is the target, Git leaves replicas alone,
the PromQL selects the overlay's own namespace, and the DCGM option swaps only the signal."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from r1ops.render import render_overlay, validate_rendered

from .render import find, kustomize

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.parent for p in (REPO / "overlays").glob("*/kustomization.yaml"))
RANGES = {"staging": (1, 3), "prod": (2, 10)}


def _analysis_prometheus_address() -> str:
    doc = yaml.safe_load((REPO / "rollouts" / "p99-latency.yaml").read_text())
    return next(a["value"] for a in doc["spec"]["args"] if a["name"] == "prometheus-address")


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param.name, kustomize(request.param)


def test_staging_and_prod_autoscale_within_their_range(rendered: tuple[str, list[dict]]) -> None:
    env, docs = rendered
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    if env == "dev":
        assert not scaled, "dev is not meant to autoscale"
    if env in RANGES:
        assert len(scaled) == 1
    for so in scaled:  # also environments made later with `r1ops new-env`
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        size = (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"])
        assert 1 <= size[0] <= size[1]
        assert size == RANGES.get(env, size)


def test_the_rollout_is_the_target_and_git_leaves_its_replicas_alone(
    rendered: tuple[str, list[dict]],
) -> None:
    _, docs = rendered
    rollout = find(docs, "Rollout", "deepseek-r1")
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    if not scaled:
        assert "replicas" in rollout["spec"]  # no autoscaler: Git sets the size
        return
    target = scaled[0]["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "deepseek-r1"}
    assert "replicas" not in rollout["spec"], "the autoscaler owns spec.replicas"
    blue_green = rollout["spec"]["strategy"].get("blueGreen")
    if blue_green:  # the preview is sized by previewReplicaCount, not by the autoscaler
        assert blue_green["previewReplicaCount"] >= 1


def test_queries_select_the_overlays_namespace(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    for so in (d for d in docs if d["kind"] == "ScaledObject"):
        namespace = so["metadata"]["namespace"]
        for trigger in so["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert f'namespace="{namespace}"' in meta["query"], meta["query"]
            assert "set-by-overlay" not in meta["query"]
            assert trigger["metricType"] == "AverageValue"  # total / replicas: canary surge cancels out
            assert (
                meta["serverAddress"] == _analysis_prometheus_address()
            )  # one Prometheus for gates and scaling
            assert meta["ignoreNullValues"] == "false"
        assert so["spec"]["fallback"]["behavior"] == "currentReplicasIfHigher"


def test_argo_cd_ignores_the_rollouts_replicas() -> None:
    appset = yaml.safe_load((REPO / "apps" / "environments.yaml").read_text())
    template = appset["spec"]["template"]["spec"]
    assert {"group": "argoproj.io", "kind": "Rollout", "jsonPointers": ["/spec/replicas"]} in template[
        "ignoreDifferences"
    ]
    assert "RespectIgnoreDifferences=true" in appset["spec"]["templatePatch"]


def test_dcgm_option_swaps_the_signal_only(tmp_path: Path) -> None:
    """prod with components/autoscaling-gpu-dcgm added after autoscaling-keda, in a copy of the tree."""
    for part in ("base", "components", "rollouts", "overlays/prod"):
        shutil.copytree(REPO / part, tmp_path / part)
    kustomization = tmp_path / "overlays" / "prod" / "kustomization.yaml"
    text = kustomization.read_text()
    keda = "  - ../../components/autoscaling-keda\n"
    assert keda in text
    kustomization.write_text(text.replace(keda, keda + "  - ../../components/autoscaling-gpu-dcgm\n"))
    rendered = render_overlay(tmp_path / "overlays" / "prod")
    assert validate_rendered(rendered) == []  # against KEDA's own CRD schema
    so = find([d for d in yaml.safe_load_all(rendered) if d], "ScaledObject", "deepseek-r1")
    (trigger,) = so["spec"]["triggers"]
    assert trigger["name"] == "gpu-utilization"
    assert 'DCGM_FI_DEV_GPU_UTIL{namespace="ai-inference-prod"' in trigger["metadata"]["query"]
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == RANGES["prod"]
