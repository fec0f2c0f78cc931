"""Put the repo's manifests on the e2e cluster: render, retarget, apply, promote.

A test overlay (tests/e2e/overlays/<case>) shortens the repo overlay's durations; `render` wraps it
in a throw-away kustomization that moves it to the test's namespace and, for a new version, patches
the Rollout's image and environment the way a release would. The AnalysisTemplates'
`prometheus-address` default is pointed at the test's Prometheus.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from r1ops.e2e.kubectl import Kubectl

ROLLOUT = "deepseek-r1"


def kustomize(kubectl: Kubectl, directory: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(kubectl.run("kustomize", str(directory))) if d]


def dump(docs: list[dict]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def namespaces_of(docs: list[dict]) -> set[str]:
    """Namespaces the objects live in (those a cluster must have before they can be applied)."""
    return {d["metadata"]["namespace"] for d in docs if d.get("metadata", {}).get("namespace")}


def ensure_namespaces(kubectl: Kubectl, names: set[str]) -> None:
    manifest = "\n---\n".join(
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}" for n in sorted(names)
    )
    if manifest:
        kubectl.apply(manifest)


def render(
    kubectl: Kubectl,
    overlay: Path,
    namespace: str,
    workdir: Path,
    prometheus_url: str,
    image: str | None = None,
    env: dict[str, str] | None = None,
) -> list[dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    patch: list[dict] = [{"op": "test", "path": "/spec/template/spec/containers/0/name", "value": "server"}]
    if image:
        patch.append({"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image})
    for name, value in (env or {}).items():
        # Appended after envFrom's ConfigMap: a literal env entry wins, as in any pod.
        patch.append(
            {
                "op": "add",
                "path": "/spec/template/spec/containers/0/env/-",
                "value": {"name": name, "value": value},
            }
        )
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        # kustomize takes no absolute roots; a relative path may leave the kustomization's directory.
        "resources": [os.path.relpath(overlay.resolve(), workdir.resolve())],
        "patches": [{"target": {"kind": "Rollout", "name": ROLLOUT}, "patch": json.dumps(patch)}],
    }
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    docs = kustomize(kubectl, workdir)
    for doc in docs:
        if doc["kind"] == "AnalysisTemplate":
            for arg in doc["spec"].get("args", []):
                if arg["name"] == "prometheus-address":
                    arg["value"] = prometheus_url
    return docs


def bind_claims(kubectl: Kubectl, namespace: str) -> None:
    """Stand in for a storage provisioner: a pre-bound hostPath PV for every pending claim.

    The scheduler will not place a pod whose claim is unbound, and this cluster has no CSI driver.
    The PV is bound by the real PV controller; nothing is ever written to it (pods are kwok's).
    """
    for pvc in kubectl.items("pvc", namespace):
        if pvc.get("status", {}).get("phase") == "Bound":
            continue
        name = f"{namespace}-{pvc['metadata']['name']}"
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]},
                "accessModes": pvc["spec"]["accessModes"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": pvc["spec"].get("storageClassName") or "",
                "hostPath": {"path": f"/nonexistent/e2e/{name}"},
                "claimRef": {"namespace": namespace, "name": pvc["metadata"]["name"]},
            },
        }
        kubectl.apply(json.dumps(pv))


def promote(kubectl: Kubectl, namespace: str, name: str = ROLLOUT) -> None:
    """What `kubectl argo rollouts promote` does for a paused rollout (status, then spec)."""
    kubectl.run(
        "patch", "rollout", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status":{"pauseConditions":null}}',
    )  # fmt: skip
    kubectl.run("patch", "rollout", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"paused":false}}')


def rollout_status(kubectl: Kubectl, namespace: str, name: str = ROLLOUT) -> dict:
    return kubectl.json("get", "rollout", name, "-n", namespace).get("status", {})


def service_hash(kubectl: Kubectl, namespace: str, service: str) -> str | None:
    svc = kubectl.json("get", "service", service, "-n", namespace)
    return svc["spec"].get("selector", {}).get("rollouts-pod-template-hash")
