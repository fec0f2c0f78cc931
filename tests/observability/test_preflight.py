"""`r1ops preflight` on recorded `kubectl get -A -o json` output of a healthy GPU cluster, broken
one thing at a time. The fixtures were recorded from the e2e tier's real control plane
(fixtures/preflight/record.py); the environments come from the real overlays. The e2e tier also
runs the command itself against a live API server (tests/e2e/test_preflight.py)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from r1ops.preflight import Check, Environment, parse_quantity, repo_app_projects, run_checks

from .render import kustomize

ENVS = ("dev", "staging", "prod")

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).with_name("fixtures") / "preflight"


class RecordedCluster:
    """Serves the fixture files; tests edit `.data` to break the cluster."""

    def __init__(self) -> None:
        self.data = {f.stem: json.loads(f.read_text())["items"] for f in FIXTURES.glob("*.json")}

    def get(self, resource: str) -> list[dict]:
        return copy.deepcopy(self.data.get(resource, []))


@pytest.fixture(scope="module")
def envs() -> list[Environment]:
    return [Environment.from_rendered(n, kustomize(REPO / "overlays" / n)) for n in ENVS]


@pytest.fixture
def cluster() -> RecordedCluster:
    return RecordedCluster()


def failing(cluster: RecordedCluster, envs: list[Environment]) -> dict[str, Check]:
    checks = run_checks(cluster, envs, repo_app_projects())
    return {c.name: c for c in checks if not c.ok}


def test_environments_come_from_the_overlays(envs: list[Environment]) -> None:
    prod = next(e for e in envs if e.name == "prod")
    assert prod.namespace == "ai-inference-prod"
    assert prod.pod_requests["nvidia.com/gpu"] == 1
    assert prod.min_pods == 3  # KEDA minReplicaCount 2 + one preview pod
    assert prod.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_healthy_cluster_passes(cluster: RecordedCluster, envs: list[Environment]) -> None:
    checks = run_checks(cluster, envs, repo_app_projects())
    assert [c for c in checks if not c.ok] == []
    names = {c.name for c in checks}
    assert {"CRD scaledobjects.keda.sh", "GPU nodes for prod", "AppProject r1-inference"} <= names
    assert "quota ai-inference-prod/gpu-quota" in names


def test_missing_crd(cluster: RecordedCluster, envs: list[Environment]) -> None:
    crds = cluster.data["customresourcedefinitions"]
    cluster.data["customresourcedefinitions"] = [
        c for c in crds if c["metadata"]["name"] != "scaledobjects.keda.sh"
    ]
    assert set(failing(cluster, envs)) == {"CRD scaledobjects.keda.sh"}


def test_gpu_nodes_without_product_label(cluster: RecordedCluster, envs: list[Environment]) -> None:
    for node in cluster.data["nodes"]:
        node["metadata"]["labels"].pop("nvidia.com/gpu.product", None)
    assert set(failing(cluster, envs)) == {"GPU nodes", "GPU nodes for staging", "GPU nodes for prod"}


def test_prod_needs_its_gpu_model(cluster: RecordedCluster, envs: list[Environment]) -> None:
    def h100(node: dict) -> bool:
        return node["metadata"]["labels"].get("nvidia.com/gpu.product") == "NVIDIA-H100-80GB-HBM3"

    cluster.data["nodes"] = [n for n in cluster.data["nodes"] if not h100(n)]
    failed = failing(cluster, envs)
    assert set(failed) == {"GPU nodes for prod"}  # staging runs on any GPU, the L4 node will do
    assert "NVIDIA-H100-80GB-HBM3" in failed["GPU nodes for prod"].detail


def test_gpu_node_without_allocatable_gpus(cluster: RecordedCluster, envs: list[Environment]) -> None:
    # Labelled by feature discovery, but the device plugin has not advertised the GPUs.
    for node in cluster.data["nodes"]:
        node["status"]["allocatable"].pop("nvidia.com/gpu", None)
    assert "GPU nodes" in failing(cluster, envs)


def test_daemonsets_not_ready_or_absent(cluster: RecordedCluster, envs: list[Environment]) -> None:
    daemonsets = cluster.data["daemonsets"]
    next(d for d in daemonsets if "device-plugin" in d["metadata"]["name"])["status"]["numberReady"] = 2
    cluster.data["daemonsets"] = [d for d in daemonsets if "dcgm" not in d["metadata"]["name"]]
    failed = failing(cluster, envs)
    assert set(failed) == {
        "DaemonSet gpu-operator/nvidia-device-plugin-daemonset",
        "DaemonSet *dcgm-exporter*",
    }
    assert failed["DaemonSet gpu-operator/nvidia-device-plugin-daemonset"].detail == "2/3 ready"


def test_absent_namespace_is_a_warning(cluster: RecordedCluster, envs: list[Environment]) -> None:
    cluster.data["namespaces"] = [
        n for n in cluster.data["namespaces"] if n["metadata"]["name"] != "ai-inference-dev"
    ]
    failed = failing(cluster, envs)
    assert set(failed) == {"namespace ai-inference-dev"}
    assert failed["namespace ai-inference-dev"].status == "warn"


def test_quota_without_room_for_the_next_pod(cluster: RecordedCluster, envs: list[Environment]) -> None:
    staging = next(
        q for q in cluster.data["resourcequotas"] if q["metadata"]["namespace"] == "ai-inference-staging"
    )
    staging["status"]["used"]["requests.nvidia.com/gpu"] = "3"
    failed = failing(cluster, envs)
    assert set(failed) == {"quota ai-inference-staging/gpu-quota"}
    assert "requests.nvidia.com/gpu: hard 3, used 3" in failed["quota ai-inference-staging/gpu-quota"].detail


def test_quota_smaller_than_min_replicas_plus_surge(
    cluster: RecordedCluster, envs: list[Environment]
) -> None:
    prod = next(
        q for q in cluster.data["resourcequotas"] if q["metadata"]["namespace"] == "ai-inference-prod"
    )
    prod["status"]["hard"]["requests.memory"] = "100Gi"  # 3 pods x 48Gi do not fit
    prod["status"]["used"]["requests.memory"] = "0"
    assert set(failing(cluster, envs)) == {"quota ai-inference-prod/gpu-quota"}


def test_missing_app_project(cluster: RecordedCluster, envs: list[Environment]) -> None:
    projects = cluster.data["appprojects.argoproj.io"]
    cluster.data["appprojects.argoproj.io"] = [p for p in projects if p["metadata"]["name"] != "r1-inference"]
    assert set(failing(cluster, envs)) == {"AppProject r1-inference"}


@pytest.mark.parametrize(
    ("text", "value"), [("500m", 0.5), ("8", 8), ("48Gi", 48 * 2**30), ("1e3", 1000), ("64M", 64e6), (2, 2)]
)
def test_parse_quantity(text: str, value: float) -> None:
    assert parse_quantity(text) == value


def test_parse_quantity_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity("lots")


# The command line: a stand-in kubectl on PATH answers `get` from the fixtures (no API server here)
# and renders `kustomize` requests with r1ops.render, so the overlays are rendered for real.
FAKE_KUBECTL = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
args = [a for a in args if not a.startswith(("--kubeconfig=", "--context="))]
if args[0] == "kustomize":  # render for real, with the PATH the test started with
    os.environ["PATH"] = os.environ["REAL_PATH"]
    from r1ops.render import render_overlay
    sys.stdout.write(render_overlay(args[1]))
    sys.exit(0)
if os.environ.get("FAKE_KUBECTL_DOWN"):
    sys.exit("The connection to the server 10.0.0.1:6443 was refused - did you specify the right host?")
path = os.path.join(os.environ["FAKE_KUBECTL_DIR"], args[1] + ".json")
items = json.load(open(path))["items"] if os.path.exists(path) else []
if os.environ.get("FAKE_KUBECTL_BREAK") and args[1] == "customresourcedefinitions":
    items = [c for c in items if c["metadata"]["name"] != os.environ["FAKE_KUBECTL_BREAK"]]
print(json.dumps({{"kind": "List", "items": items}}))
"""


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "kubectl"
    fake.write_text(FAKE_KUBECTL.format(python=sys.executable))
    fake.chmod(0o755)
    environ = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "REAL_PATH": os.environ["PATH"],
        "FAKE_KUBECTL_DIR": str(FIXTURES),
        "FAKE_KUBECTL_LOG": str(tmp_path / "kubectl.log"),
        "COLUMNS": "200",
        **env,
    }
    cmd = [sys.executable, "-m", "r1ops.cli", "preflight", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=120)


def test_cli_passes_kubeconfig_and_context_and_prints_a_table(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "--kubeconfig", "/tmp/kc", "--context", "gpu-cluster", "--env", "prod")
    assert out.returncode == 0, out.stderr
    assert "GPU nodes for prod" in out.stdout and "MISSING" not in out.stdout
    calls = (tmp_path / "kubectl.log").read_text().splitlines()
    cluster_calls = [c for c in calls if not c.startswith("kustomize ")]  # rendering is local
    assert cluster_calls
    assert all(c.startswith("--kubeconfig=/tmp/kc --context=gpu-cluster get ") for c in cluster_calls)


def test_cli_exits_non_zero_when_something_required_is_missing(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "--env", "staging", FAKE_KUBECTL_BREAK="rollouts.argoproj.io")
    assert out.returncode == 1
    assert "CRD rollouts.argoproj.io" in out.stdout and "MISSING" in out.stdout
    assert "1 required check(s) failed" in out.stdout


def test_cli_unreachable_cluster_is_one_line(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "--env", "staging", FAKE_KUBECTL_DOWN="1")
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0
    assert out.stderr.startswith("r1ops preflight: kubectl get") and "refused" in out.stderr


def test_cli_unknown_environment(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "--env", "qa")
    assert out.returncode == 1
    assert out.stderr.strip() == "r1ops preflight: no overlay for environment(s): qa"
