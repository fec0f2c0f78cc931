"""`r1ops preflight`: does this cluster have what the stack needs, before Argo CD syncs it?

Reads the cluster through kubectl (current context, or --kubeconfig/--context) and the repository's
own overlays (rendered by r1ops.render), and prints one table row per check. Exit 1 when a
required check fails; warnings (things the first sync creates) do not fail it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml
from rich.console import Console
from rich.table import Table

from r1ops.cli import CommandError
from r1ops.render import render_overlay

REPO = Path(__file__).resolve().parents[2]
GPU = "nvidia.com/gpu"
GPU_PRODUCT = "nvidia.com/gpu.product"

# CRD name -> the component of the stack that needs it.
REQUIRED_CRDS = {
    "rollouts.argoproj.io": "Argo Rollouts (the workload)",
    "analysistemplates.argoproj.io": "Argo Rollouts (the gates)",
    "analysisruns.argoproj.io": "Argo Rollouts (the gates)",
    "applications.argoproj.io": "Argo CD",
    "appprojects.argoproj.io": "Argo CD",
    "podmonitors.monitoring.coreos.com": "Prometheus Operator (scraping the server)",
    "prometheusrules.monitoring.coreos.com": "Prometheus Operator (observability/)",
    "scaledobjects.keda.sh": "KEDA (components/autoscaling-keda)",
}
# DaemonSet name fragment -> what it provides.
REQUIRED_DAEMONSETS = {
    "nvidia-device-plugin": "advertises nvidia.com/gpu on GPU nodes",
    "dcgm-exporter": "GPU metrics (GPU alerts, dashboard, DCGM autoscaling option)",
}


class Cluster(Protocol):
    def get(self, resource: str) -> list[dict]:
        """`kubectl get RESOURCE -A -o json` items; [] when the resource type does not exist."""
        ...


@dataclass
class Kubectl:
    """The real cluster, through the kubectl on PATH."""

    kubeconfig: str | None = None
    context: str | None = None
    binary: str = "kubectl"

    def _run(self, *args: str) -> str:
        cmd = [self.binary]
        if self.kubeconfig:
            cmd.append(f"--kubeconfig={self.kubeconfig}")
        if self.context:
            cmd.append(f"--context={self.context}")
        try:
            out = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)
        except FileNotFoundError as exc:
            raise CommandError(f"{self.binary} not found on PATH") from exc
        except subprocess.TimeoutExpired as exc:
            raise CommandError(f"kubectl {' '.join(args)}: no answer from the cluster in 60s") from exc
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
            raise CommandError(f"kubectl {' '.join(args)}: {last}")
        return out.stdout

    def get(self, resource: str) -> list[dict]:
        try:
            return json.loads(self._run("get", resource, "--all-namespaces", "-o", "json"))["items"]
        except CommandError as exc:
            if "doesn't have a resource type" in str(exc):  # CRD absent: the CRD check reports it
                return []
            raise


@dataclass
class Environment:
    """What one overlay asks of the cluster."""

    name: str
    namespace: str
    pod_requests: dict[str, float]  # resource -> amount per pod (cpu in cores, memory in bytes)
    min_pods: int  # min replicas, plus one pod of canary/preview surge
    node_selector: dict[str, str]

    @classmethod
    def from_rendered(cls, name: str, docs: list[dict]) -> Environment:
        rollout = next(d for d in docs if d["kind"] == "Rollout")
        spec = rollout["spec"]["template"]["spec"]
        requests: dict[str, float] = {}
        for container in spec["containers"]:
            resources = container.get("resources", {})
            # Extended resources (GPUs) may be given as limits only: requests default to them.
            for key, value in {**resources.get("limits", {}), **resources.get("requests", {})}.items():
                requests[key] = requests.get(key, 0) + parse_quantity(value)
        scaled = [d for d in docs if d["kind"] == "ScaledObject"]
        replicas = (
            scaled[0]["spec"].get("minReplicaCount", 1) if scaled else rollout["spec"].get("replicas", 1)
        )
        return cls(
            name, rollout["metadata"]["namespace"], requests, replicas + 1, spec.get("nodeSelector", {})
        )


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("MISSING" if self.required else "warn")


_SUFFIXES = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_SUFFIXES |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_quantity(value: str | float) -> float:
    """A Kubernetes quantity ("500m", "48Gi", "1e3", 2) as a number (cores, bytes, devices)."""
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([A-Za-z]*)", str(value).strip())
    if not match or match.group(2) not in {"", *_SUFFIXES}:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(match.group(1)) * _SUFFIXES.get(match.group(2), 1)


def check_crds(cluster: Cluster) -> list[Check]:
    installed = {crd["metadata"]["name"] for crd in cluster.get("customresourcedefinitions")}
    return [Check(f"CRD {name}", name in installed, why) for name, why in REQUIRED_CRDS.items()]


def check_gpu_nodes(cluster: Cluster, envs: Iterable[Environment]) -> list[Check]:
    nodes = cluster.get("nodes")
    gpu_nodes = [
        n
        for n in nodes
        if GPU_PRODUCT in n["metadata"].get("labels", {})
        and parse_quantity(n["status"].get("allocatable", {}).get(GPU, 0)) > 0
    ]
    products = sorted({n["metadata"]["labels"][GPU_PRODUCT] for n in gpu_nodes})
    checks = [
        Check(
            "GPU nodes",
            bool(gpu_nodes),
            f"{len(gpu_nodes)} labelled {GPU_PRODUCT}, allocatable {GPU}: {', '.join(products) or 'none'}",
        )
    ]
    for env in envs:
        gpus = env.pod_requests.get(GPU, 0)
        if not gpus:
            continue
        fits = [
            n
            for n in gpu_nodes
            if all(n["metadata"]["labels"].get(k) == v for k, v in env.node_selector.items())
            and parse_quantity(n["status"]["allocatable"][GPU]) >= gpus
        ]
        wanted = ", ".join(f"{k}={v}" for k, v in env.node_selector.items()) or "any GPU node"
        checks.append(
            Check(
                f"GPU nodes for {env.name}",
                bool(fits),
                f"{len(fits)} node(s) with {wanted} and >= {gpus:g} GPU",
            )
        )
    return checks


def check_daemonsets(cluster: Cluster) -> list[Check]:
    checks = []
    daemonsets = cluster.get("daemonsets")
    for fragment, why in REQUIRED_DAEMONSETS.items():
        found = [d for d in daemonsets if fragment in d["metadata"]["name"]]
        if not found:
            checks.append(Check(f"DaemonSet *{fragment}*", False, f"not found ({why})"))
            continue
        for ds in found:
            status = ds.get("status", {})
            desired, ready = status.get("desiredNumberScheduled", 0), status.get("numberReady", 0)
            where = f"{ds['metadata']['namespace']}/{ds['metadata']['name']}"
            checks.append(
                Check(f"DaemonSet {where}", desired > 0 and ready == desired, f"{ready}/{desired} ready")
            )
    return checks


def check_namespaces_and_quotas(cluster: Cluster, envs: Iterable[Environment]) -> list[Check]:
    namespaces = {n["metadata"]["name"] for n in cluster.get("namespaces")}
    quotas = cluster.get("resourcequotas")
    checks = []
    for env in envs:
        if env.namespace not in namespaces:
            # The overlay renders its Namespace: Argo CD creates it on the first sync.
            checks.append(
                Check(f"namespace {env.namespace}", False, "absent; the first sync creates it", False)
            )
            continue
        checks.append(Check(f"namespace {env.namespace}", True, "present"))
        for quota in (q for q in quotas if q["metadata"]["namespace"] == env.namespace):
            checks.append(_quota_check(env, quota))
    return checks


def _quota_check(env: Environment, quota: dict) -> Check:
    """Room for the next pod now (hard - used), and capacity for min replicas plus the surge pod."""
    hard, used = quota.get("status", {}).get("hard", {}), quota.get("status", {}).get("used", {})
    short = []
    for key, limit in hard.items():
        resource = key.removeprefix("requests.").removeprefix("limits.")
        per_pod = 1.0 if key in ("pods", "count/pods") else env.pod_requests.get(resource, 0)
        if not per_pod:
            continue
        room = parse_quantity(limit) - parse_quantity(used.get(key, 0))
        if room < per_pod or parse_quantity(limit) < per_pod * env.min_pods:
            short.append(
                f"{key}: hard {limit}, used {used.get(key, 0)}, needs {per_pod:g}/pod x {env.min_pods}"
            )
    name = f"quota {env.namespace}/{quota['metadata']['name']}"
    return Check(name, not short, "; ".join(short) or f"room for {env.min_pods} pods")


def check_app_projects(cluster: Cluster, names: Iterable[str]) -> list[Check]:
    present = {p["metadata"]["name"] for p in cluster.get("appprojects.argoproj.io")}
    return [
        Check(f"AppProject {name}", name in present, "apps/projects (bootstrap applies it)") for name in names
    ]


def repo_app_projects(repo: Path = REPO) -> list[str]:
    docs = [
        d
        for f in sorted((repo / "apps" / "projects").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
    ]
    return [d["metadata"]["name"] for d in docs if d and d.get("kind") == "AppProject"]


def run_checks(cluster: Cluster, envs: list[Environment], projects: list[str]) -> list[Check]:
    steps: list[Callable[[], list[Check]]] = [
        lambda: check_crds(cluster),
        lambda: check_gpu_nodes(cluster, envs),
        lambda: check_daemonsets(cluster),
        lambda: check_namespaces_and_quotas(cluster, envs),
        lambda: check_app_projects(cluster, projects),
    ]
    return [check for step in steps for check in step()]


def print_table(checks: list[Check], console: Console) -> None:
    table = Table(title="r1ops preflight")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    colour = {"ok": "green", "MISSING": "bold red", "warn": "yellow"}
    for c in checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail)
    console.print(table)


def _render(overlay: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(render_overlay(overlay)) if d]


def run(args: argparse.Namespace) -> int:
    kubectl = Kubectl(args.kubeconfig, args.context)
    overlays = REPO / "overlays"
    names = args.env or sorted(p.parent.name for p in overlays.glob("*/kustomization.yaml"))
    unknown = [n for n in names if not (overlays / n / "kustomization.yaml").is_file()]
    if unknown:
        raise CommandError(f"no overlay for environment(s): {', '.join(unknown)}")
    console = Console()
    with console.status("rendering the overlays"):
        envs = [Environment.from_rendered(n, _render(overlays / n)) for n in names]
    with console.status(f"reading the cluster ({kubectl.context or 'current context'})"):
        checks = run_checks(kubectl, envs, repo_app_projects())
    print_table(checks, console)
    missing = [c for c in checks if c.status == "MISSING"]
    if missing:
        print(f"{len(missing)} required check(s) failed")
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preflight", help="check a cluster for what the stack needs", description=__doc__
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: kubectl's)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("--env", action="append", help="overlay to check (repeatable; default: all)")
    p.set_defaults(func=run)
