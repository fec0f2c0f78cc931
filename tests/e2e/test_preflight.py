"""`r1ops preflight` against the real API server of the e2e tier (owned by the observability area).

The control plane is real: CRDs installed by the harness, kwok nodes labelled like H100 nodes, the
DaemonSet controller counting ready pods, the quota controller filling in `used`. The unit tests
(tests/observability/test_preflight.py) cover each check on recorded JSON; this proves the
command reads a live cluster through --kubeconfig the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from r1ops.e2e.cluster import Cluster
from r1ops.e2e.gpu_platform import GPU_DAEMONSETS, PLATFORM, daemonset
from r1ops.e2e.kubectl import Kubectl

pytestmark = pytest.mark.e2e

PROD_NAMESPACE = """
apiVersion: v1
kind: Namespace
metadata: {name: ai-inference-prod}
"""

QUOTA = """
apiVersion: v1
kind: ResourceQuota
metadata: {{name: gpu-quota, namespace: ai-inference-prod}}
spec:
  hard: {{requests.nvidia.com/gpu: "{gpus}", requests.cpu: "64", requests.memory: 512Gi}}
"""


def preflight(cluster: Cluster) -> subprocess.CompletedProcess:
    bin_dir = Path(cluster.tc.bin("kubectl")).parent  # the harness's kubectl, first on PATH
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "COLUMNS": "200"}
    cmd = [
        sys.executable,
        "-m",
        "r1ops.cli",
        "preflight",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--env",
        "prod",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _ready(kubectl: Kubectl, name: str) -> bool:
    status = kubectl.json("get", "daemonset", name, "-n", "gpu-operator").get("status", {})
    return (
        status.get("desiredNumberScheduled", 0) > 0
        and status.get("numberReady") == status["desiredNumberScheduled"]
    )


def _quota_seen(kubectl: Kubectl, gpus: str) -> bool:
    status = kubectl.json("get", "resourcequota", "gpu-quota", "-n", "ai-inference-prod").get("status", {})
    return status.get("hard", {}).get("requests.nvidia.com/gpu") == gpus and "used" in status


def test_preflight_on_a_real_api_server(cluster: Cluster, kubectl: Kubectl) -> None:
    try:
        kubectl.apply(PLATFORM + "---\n" + PROD_NAMESPACE)
        for name in GPU_DAEMONSETS:
            kubectl.apply(daemonset(name))
        kubectl.apply(QUOTA.format(gpus=8))
        for name in GPU_DAEMONSETS:
            kubectl.wait_for(lambda n=name: _ready(kubectl, n), 120, f"DaemonSet {name} ready")
        kubectl.wait_for(lambda: _quota_seen(kubectl, "8"), 60, "quota status")

        ok = preflight(cluster)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        for row in (
            "CRD scaledobjects.keda.sh",
            "GPU nodes for prod",
            "DaemonSet gpu-operator/nvidia-dcgm-exporter",
        ):
            assert row in ok.stdout

        # Prod needs 1 GPU x (2 replicas + 1 preview pod): a quota of 2 GPUs cannot hold it.
        kubectl.apply(QUOTA.format(gpus=2))
        kubectl.wait_for(lambda: _quota_seen(kubectl, "2"), 60, "quota status")
        short = preflight(cluster)
        assert short.returncode == 1
        assert "quota ai-inference-prod/gpu-quota" in short.stdout and "MISSING" in short.stdout
    finally:
        for name in GPU_DAEMONSETS:
            kubectl.run("delete", "daemonset", name, "-n", "gpu-operator", "--wait=false", check=False)
        kubectl.run("delete", "appprojects", "--all", "-n", "argocd", "--wait=false", check=False)
        kubectl.run("delete", "namespace", "ai-inference-prod", "--wait=false", check=False)
