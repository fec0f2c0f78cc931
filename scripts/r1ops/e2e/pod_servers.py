"""The e2e tier's stand-in for a kubelet's containers: one real `r1serve` process per Ready pod.

kwok makes pods Running and Ready without running anything. This watcher gives every Ready server
pod a real process on 127.0.0.1, configured the way the pod would be: the container's `R1SERVE_*`
environment, resolved from its `env` and `envFrom` ConfigMaps with the kubelet's `$(VAR)`
expansion. Only what cannot apply here is overridden: the checkpoint (the tiny model), the
address, and the device (no GPU). Prometheus scrapes each process with the labels the PodMonitor
would add (namespace, pod, rollouts_pod_template_hash). When the pod goes, its process is stopped.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from r1ops.e2e.kubectl import Kubectl
from r1ops.e2e.prometheus import Prometheus
from r1ops.e2e.reconciler import Reconciler
from r1ops.processes import ServerProcess

HASH_LABEL = "rollouts-pod-template-hash"
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# Set by the harness, whatever the pod says: see the module docstring.
OVERRIDDEN = {"MODEL", "HOST", "PORT", "DEVICE"}


def _is_ready(pod: dict) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conds = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def container_env(kubectl: Kubectl, pod: dict, container: str = "server") -> dict[str, str]:
    """The container's environment as the kubelet builds it (ConfigMap and literal values)."""
    ns = pod["metadata"]["namespace"]
    spec = next(c for c in pod["spec"]["containers"] if c["name"] == container)
    env: dict[str, str] = {}
    for src in spec.get("envFrom", []):
        if ref := src.get("configMapRef"):
            cm = kubectl.json("get", "configmap", ref["name"], "-n", ns)
            env.update({src.get("prefix", "") + k: v for k, v in cm.get("data", {}).items()})
    for var in spec.get("env", []):
        if "value" in var:
            env[var["name"]] = _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), var["value"])
        elif ref := var.get("valueFrom", {}).get("configMapKeyRef"):
            cm = kubectl.json("get", "configmap", ref["name"], "-n", ns)
            if ref["key"] in cm.get("data", {}):
                env[var["name"]] = cm["data"][ref["key"]]
        # secretKeyRef: the stack's only one is the optional API key, absent in the tests.
    return env


@dataclass
class PodServer:
    pod: str
    template_hash: str
    server: ServerProcess

    @property
    def url(self) -> str:
        return self.server.base_url


class PodServers(Reconciler):
    """Keep one ready `r1serve` per Ready pod matching `selector`; run as a context manager."""

    thread_name = "pod-servers"

    def __init__(
        self,
        kubectl: Kubectl,
        namespace: str,
        model_dir: Path,
        prometheus: Prometheus,
        logdir: Path,
        selector: str = "app.kubernetes.io/component=server",
    ) -> None:
        self.kubectl = kubectl
        self.namespace = namespace
        self.model_dir = model_dir
        self.prometheus = prometheus
        super().__init__(logdir)
        self.selector = selector
        self.ready: dict[str, PodServer] = {}
        self._starting: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pod-server")
        self.history: list[PodServer] = []
        self._retired: list[PodServer] = []

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            servers, self.ready = [*self.ready.values(), *self._retired], {}
        for ps in servers:
            ps.server.stop(timeout=30)
        self.prometheus.set_targets([])

    def settings_for(self, pod: dict) -> dict[str, str]:
        env = container_env(self.kubectl, pod)
        return {
            k.removeprefix("R1SERVE_").lower(): v
            for k, v in env.items()
            if k.startswith("R1SERVE_") and k.removeprefix("R1SERVE_") not in OVERRIDDEN
        } | {"device": "cpu"}

    def _start(self, pod: dict) -> None:
        name = pod["metadata"]["name"]
        try:
            server = ServerProcess(
                self.model_dir, settings=self.settings_for(pod), log_path=self.logdir / f"{name}.log"
            )
            server.start(ready_timeout=180)
            ps = PodServer(name, pod["metadata"]["labels"].get(HASH_LABEL, ""), server)
            with self._lock:
                self.ready[name] = ps
                self.history.append(ps)
            self._publish()
        except Exception as exc:
            self.errors.append(f"{name}: {exc}")
        finally:
            with self._lock:
                self._starting.discard(name)

    def reconcile(self) -> None:
        pods = {p["metadata"]["name"]: p for p in self.kubectl.items("pods", self.namespace, self.selector)}
        wanted = {name for name, pod in pods.items() if _is_ready(pod)}
        with self._lock:
            gone = [self.ready.pop(n) for n in list(self.ready) if n not in wanted]
            self._retired += gone
            new = [n for n in wanted if n not in self.ready and n not in self._starting]
            self._starting.update(new)
        if gone:
            self._publish()
        for ps in gone:
            ps.server.terminate()  # drains in the background, like a pod's SIGTERM
        for name in new:
            self._pool.submit(self._start, pods[name])

    def _publish(self) -> None:
        with self._lock:
            servers = list(self.ready.values())
        self.prometheus.set_targets(
            [
                {
                    "targets": [f"{ps.server.host}:{ps.server.port}"],
                    "labels": {
                        "namespace": self.namespace,
                        "pod": ps.pod,
                        "rollouts_pod_template_hash": ps.template_hash,
                    },
                }
                for ps in servers
            ]
        )

    def urls(self, pods: set[str]) -> list[str]:
        with self._lock:
            return [ps.url for name, ps in self.ready.items() if name in pods]
