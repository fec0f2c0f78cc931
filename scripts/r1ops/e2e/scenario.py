"""One release scenario on the e2e cluster: the repo's overlay in a test namespace, a real Prometheus,
a real `r1serve` behind every Ready pod, and (when asked) Locust traffic through the Services.

    with Scenario(cluster, namespace, overlay, model_dir, workdir) as sc:
        sc.deploy("1.0.0"); sc.wait_healthy()
        with sc.load(["deepseek-r1"]):
            sc.deploy("1.1.0-slow", env={"R1SERVE_TEST_DELAY_SECONDS": "6"})
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from r1ops.e2e.cluster import Cluster
from r1ops.e2e.deploy import ROLLOUT, bind_claims, dump, render, rollout_status
from r1ops.e2e.load import ServiceLoad, endpoint_pods
from r1ops.e2e.pod_servers import HASH_LABEL, PodServers
from r1ops.e2e.prometheus import Prometheus

IMAGE_REPO = "ghcr.io/example-org/r1serve"


class Scenario:
    def __init__(
        self, cluster: Cluster, namespace: str, overlay: Path, model_dir: Path, workdir: Path
    ) -> None:
        self.cluster = cluster
        self.kubectl = cluster.kubectl
        self.namespace = namespace
        self.overlay = overlay
        self.model_dir = model_dir
        self.dir = workdir
        self.prometheus = Prometheus(workdir / "prometheus")
        self.pods: PodServers | None = None
        self._stack = contextlib.ExitStack()
        self.manifests: Path | None = None
        self.versions = 0

    def __enter__(self) -> Scenario:
        try:
            self._stack.enter_context(self.prometheus)
            self.pods = self._stack.enter_context(
                PodServers(
                    self.kubectl, self.namespace, self.model_dir, self.prometheus, self.dir / "servers"
                )
            )
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def deploy(self, tag: str, env: dict[str, str] | None = None) -> Path:
        """Apply the overlay with image tag `tag` (and extra container env); returns the manifests."""
        self.versions += 1
        docs = render(
            self.kubectl,
            self.overlay,
            self.namespace,
            self.dir / f"release-{self.versions}",
            self.prometheus.url,
            image=f"{IMAGE_REPO}:{tag}",
            env=env,
        )
        self.manifests = self.dir / f"release-{self.versions}.yaml"
        self.manifests.write_text(dump(docs))
        # Client-side apply, as Argo CD syncs these apps: its three-way merge keeps the
        # rollouts-pod-template-hash Argo Rollouts adds to the Services' selectors. Server-side apply
        # would replace the (atomic) selector map, and a blue-green Rollout with no active selector
        # promotes the next version as an "initial deploy", skipping its analysis.
        self.kubectl.run("apply", "-f", str(self.manifests))
        bind_claims(self.kubectl, self.namespace)
        return self.manifests

    def load(self, services: list[str], users: int = 2) -> ServiceLoad:
        assert self.pods is not None
        return ServiceLoad(self.kubectl, self.namespace, services, self.pods, self.dir / "load", users=users)

    def status(self) -> dict:
        return rollout_status(self.kubectl, self.namespace)

    def wait_status(self, predicate: Callable[[dict], object], timeout: float, what: str) -> dict:
        """Poll the Rollout's status until `predicate(status)`; fail early if a component died."""

        def check() -> dict | None:
            self.cluster.check_alive()
            self.raise_harness_errors()
            st = self.status()
            if predicate(st):
                return st
            # Terminal for this release unless a person acts: waiting longer cannot help.
            if st.get("abort") or st.get("message") == "InconclusiveAnalysisRun":
                raise AssertionError(f"{what}: rollout stopped instead ({st.get('message')})")
            return None

        try:
            return self.kubectl.wait_for(check, timeout, what, interval=2)
        except (TimeoutError, AssertionError) as exc:
            raise AssertionError(
                f"{exc}\nrollout status: {self.status()}\n{self.describe_analysis()}"
            ) from None

    def wait_healthy(self, timeout: float = 240) -> dict:
        """Healthy, fully promoted, and every Ready pod has its server up (Prometheus scrapes them)."""
        st = self.wait_status(
            lambda s: s.get("phase") == "Healthy" and s.get("stableRS") == s.get("currentPodHash"),
            timeout,
            "rollout Healthy",
        )
        assert self.pods is not None
        self.kubectl.wait_for(
            lambda: len(self.pods.ready) >= st.get("readyReplicas", 1), 120, "servers for every ready pod"
        )
        return st

    def raise_harness_errors(self) -> None:
        if self.pods and self.pods.errors:
            raise RuntimeError(f"pod servers: {self.pods.errors}")

    def analysis_runs(self) -> list[dict]:
        runs = self.kubectl.items("analysisruns", self.namespace)
        return sorted(runs, key=lambda r: r["metadata"]["creationTimestamp"])

    def describe_analysis(self) -> str:
        """The AnalysisRuns' measurements and who each Service sends traffic to (for failures)."""
        lines = [
            f"Service {s['metadata']['name']} -> pods of {sorted(self.serving(s['metadata']['name']))}"
            for s in self.kubectl.items("services", self.namespace)
        ]
        for run in self.analysis_runs():
            st = run.get("status", {})
            lines.append(f"AnalysisRun {run['metadata']['name']}: {st.get('phase')} {st.get('message', '')}")
            for m in st.get("metricResults", []):
                values = [(x.get("phase"), x.get("value")) for x in m.get("measurements", [])]
                lines.append(f"  {m['name']}: {m.get('phase')} {values}")
        return "\n".join(lines)

    def serving(self, service: str) -> set[str]:
        """Template hashes of the pods behind a Service's ready endpoints: who really gets its traffic."""
        names = endpoint_pods(self.kubectl, self.namespace, service)
        pods = self.kubectl.items("pods", self.namespace)
        return {p["metadata"]["labels"].get(HASH_LABEL, "") for p in pods if p["metadata"]["name"] in names}

    def rollout(self) -> dict:
        return self.kubectl.json("get", "rollout", ROLLOUT, "-n", self.namespace)
