"""Client traffic for the e2e tier: real Locust, spread over a Service's endpoints.

There is no kube-proxy here, so this plays its part: every second it reads the EndpointSlices of
the Services clients call and keeps one headless Locust (the repo's locustfile, same users each)
per ready endpoint. Each endpoint therefore gets an equal share, which is exactly how a Service
without traffic routing splits load between stable and canary pods (by replica count).
"""

from __future__ import annotations

import sys
from pathlib import Path

from r1ops.e2e.kubectl import Kubectl
from r1ops.e2e.pod_servers import PodServers
from r1ops.e2e.procs import Proc
from r1ops.e2e.reconciler import ProcessReconciler

REPO = Path(__file__).resolve().parents[3]
LOCUSTFILE = REPO / "loadtests" / "locustfile.py"


def endpoint_pods(kubectl: Kubectl, namespace: str, service: str) -> set[str]:
    """Pods behind a Service right now: ready endpoints of its EndpointSlices."""
    slices = kubectl.items("endpointslices", namespace, f"kubernetes.io/service-name={service}")
    return {
        ep["targetRef"]["name"]
        for s in slices
        for ep in s.get("endpoints") or []
        if ep.get("conditions", {}).get("ready") and ep.get("targetRef", {}).get("kind") == "Pod"
    }


class ServiceLoad(ProcessReconciler):
    """Locust against the endpoints of `services`, `users` concurrent users per endpoint."""

    thread_name = "service-load"

    def __init__(
        self,
        kubectl: Kubectl,
        namespace: str,
        services: list[str],
        pods: PodServers,
        logdir: Path,
        users: int = 2,
        locustfile: Path = LOCUSTFILE,
    ) -> None:
        self.kubectl = kubectl
        self.namespace = namespace
        self.services = services
        self.pods = pods
        super().__init__(logdir)
        self.users = users
        self.locustfile = locustfile
        self.served: set[str] = set()

    def __enter__(self) -> ServiceLoad:
        if not self.locustfile.is_file():
            raise FileNotFoundError(f"locustfile {self.locustfile} not found")
        return super().__enter__()

    def reconcile(self) -> None:
        pods: set[str] = set()
        for svc in self.services:
            pods |= endpoint_pods(self.kubectl, self.namespace, svc)
        # A kwok pod is Ready at once; its process a few seconds later. Only send to processes
        # that answer, as a real readiness probe would have held the pod back until then.
        urls = set(self.pods.urls(pods))
        for url in [u for u in self.running if u not in urls]:
            self.running.pop(url).stop()
        for url in urls - self.running.keys():
            self.running[url] = self._locust(url)
            self.served.add(url)

    def _locust(self, url: str) -> Proc:
        n = len(self.served)
        cmd = [
            sys.executable, "-m", "locust", "-f", str(self.locustfile), "--headless",
            "--host", url, "--users", str(self.users), "--spawn-rate", str(self.users),
            "--max-tokens", "16-32", "--only-summary", "--loglevel", "WARNING",
        ]  # fmt: skip
        return Proc(f"locust-{n}", cmd, self.logdir / f"locust-{n}.log").start()
