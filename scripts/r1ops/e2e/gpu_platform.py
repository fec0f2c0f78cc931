"""The platform pieces preflight looks for, as the e2e cluster stands them in: the gpu-operator and
argocd namespaces, the stack's AppProjects, and the NVIDIA device plugin and DCGM exporter DaemonSets
(kwok runs their pods on the GPU-labelled nodes). Shared by the preflight e2e test and the script
that records the preflight unit-test fixtures."""

from __future__ import annotations

GPU_DAEMONSETS = ("nvidia-device-plugin-daemonset", "nvidia-dcgm-exporter")

# Applied before the DaemonSets (they live in gpu-operator). The AppProjects are empty: preflight
# checks that they exist, Argo CD is not running.
PLATFORM = """
apiVersion: v1
kind: Namespace
metadata: {name: gpu-operator}
---
apiVersion: v1
kind: Namespace
metadata: {name: argocd}
---
apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata: {name: r1-inference, namespace: argocd}
spec: {}
---
apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata: {name: r1-platform, namespace: argocd}
spec: {}
"""

_DAEMONSET = """
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: {name}, namespace: gpu-operator}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      nodeSelector: {{nvidia.com/gpu.present: "true"}}
      containers: [{{name: main, image: "nvcr.io/nvidia/{name}:pinned"}}]
"""


def daemonset(name: str) -> str:
    """A DaemonSet manifest in gpu-operator that schedules onto nodes with nvidia.com/gpu.present."""
    return _DAEMONSET.format(name=name)
