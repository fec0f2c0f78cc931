"""The control plane itself: every component is real and does its job."""

from __future__ import annotations

import json

import pytest
from r1ops.e2e.cluster import Cluster
from r1ops.e2e.kubectl import Kubectl

pytestmark = pytest.mark.e2e

ROLLOUT = """
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {{name: smoke}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: smoke}}}}
  template:
    metadata: {{labels: {{app: smoke}}}}
    spec:
      containers: [{{name: app, image: "registry.example/smoke:{tag}"}}]
  strategy:
    canary:
      steps: [{{setWeight: 50}}, {{pause: {{duration: 1s}}}}]
"""


def test_api_server_reports_the_built_version(cluster: Cluster, kubectl: Kubectl) -> None:
    version = json.loads(kubectl.run("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"] == cluster.tc.kubernetes_version


@pytest.mark.parametrize(
    "crd",
    [
        "rollouts.argoproj.io",
        "analysistemplates.argoproj.io",
        "applications.argoproj.io",
        "podmonitors.monitoring.coreos.com",
        "scaledobjects.keda.sh",
    ],
)
def test_crd_is_established(kubectl: Kubectl, crd: str) -> None:
    conds = kubectl.json("get", "crd", crd)["status"]["conditions"]
    assert {"type": "Established", "status": "True"} in [{k: c[k] for k in ("type", "status")} for c in conds]


def test_fake_nodes_are_ready(kubectl: Kubectl) -> None:
    nodes = kubectl.json("get", "nodes")["items"]
    assert nodes
    for node in nodes:
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["metadata"]["name"]


def _phase(kubectl: Kubectl, namespace: str) -> dict:
    ro = kubectl.json("get", "rollout", "smoke", "-n", namespace)
    return ro.get("status", {})


def test_rollout_with_real_controller_reaches_healthy_then_updates(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(ROLLOUT.format(tag="1"), "-n", namespace)
    first = kubectl.wait_for(
        lambda: (s := _phase(kubectl, namespace)).get("phase") == "Healthy" and s,
        120,
        "first version Healthy",
    )
    assert first["availableReplicas"] == 2
    pods = kubectl.items("pods", namespace, "app=smoke")
    assert all(p["status"]["phase"] == "Running" for p in pods)

    kubectl.apply(ROLLOUT.format(tag="2"), "-n", namespace)
    second = kubectl.wait_for(
        lambda: (
            (s := _phase(kubectl, namespace)).get("phase") == "Healthy"
            and s.get("stableRS") != first["stableRS"]
            and s
        ),
        180,
        "second version promoted through its canary steps",
    )
    assert second["stableRS"] == second["currentPodHash"]

    def images() -> set[str]:
        return {p["spec"]["containers"][0]["image"] for p in kubectl.items("pods", namespace, "app=smoke")}

    # The old ReplicaSet's pods go once the new one is stable (kwok completes their deletion).
    kubectl.wait_for(lambda: images() == {"registry.example/smoke:2"}, 60, "only new pods left")
