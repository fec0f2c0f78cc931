"""The e2e tier's stand-in for a kubelet running the analysis Jobs' Locust pods.

The blue-green pre-promotion analysis (AnalysisTemplate inference-preview-load, provider `job`)
creates a Job whose pod runs the repo's Locust against the preview Service. kwok would only fake
that pod; here it really runs: the pod's own command line, with the image's locustfile path mapped
to the repo's and the Service URL mapped to the process behind its endpoint. When Locust exits,
the pod's status is set from its exit code, so the real Job controller and the real Argo Rollouts
controller see success or failure exactly as in a cluster. (kwok's pod-complete stage, which
would mark every Job pod Succeeded at once, is therefore not loaded; see e2e/sources.yaml.)
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from r1ops.e2e.kubectl import Kubectl
from r1ops.e2e.load import LOCUSTFILE, endpoint_pods
from r1ops.e2e.pod_servers import PodServers
from r1ops.e2e.procs import Proc
from r1ops.e2e.reconciler import ProcessReconciler

_SERVICE_URL = re.compile(r"^http://([a-z0-9-]+)(?::\d+)?/?$")


class LocustJobPods(ProcessReconciler):
    thread_name = "job-pods"

    def __init__(self, kubectl: Kubectl, namespace: str, pods: PodServers, logdir: Path) -> None:
        self.kubectl = kubectl
        self.namespace = namespace
        self.pods = pods
        super().__init__(logdir)
        self.finished: dict[str, int] = {}

    def reconcile(self) -> None:
        for pod in self.kubectl.items("pods", self.namespace):
            name = pod["metadata"]["name"]
            owners = {o["kind"] for o in pod["metadata"].get("ownerReferences", [])}
            command = pod["spec"]["containers"][0].get("command", [])
            if "Job" not in owners or command[:1] != ["locust"] or name in self.finished:
                continue
            if name not in self.running and pod.get("status", {}).get("phase") == "Running":
                self.running[name] = self._start(name, command)
        for name, proc in list(self.running.items()):
            if not proc.alive():
                del self.running[name]
                self.finished[name] = proc.popen.returncode
                self._complete(name, proc.popen.returncode)

    def _local_command(self, command: list[str]) -> list[str]:
        args = list(command[1:])
        for i, arg in enumerate(args[:-1]):
            if arg == "-f":
                args[i + 1] = str(LOCUSTFILE)
            elif arg == "--host" and (m := _SERVICE_URL.match(args[i + 1])):
                args[i + 1] = self._resolve(m.group(1))
        return [sys.executable, "-m", "locust", *args]

    def _resolve(self, service: str) -> str:
        """The Service's endpoint as its server process (the preview has one pod)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            urls = self.pods.urls(endpoint_pods(self.kubectl, self.namespace, service))
            if urls:
                return sorted(urls)[0]
            time.sleep(1)
        raise RuntimeError(f"service {service} has no endpoint with a running server")

    def _start(self, name: str, command: list[str]) -> Proc:
        return Proc(name, self._local_command(command), self.logdir / f"{name}.log").start()

    def _complete(self, name: str, code: int) -> None:
        pod = self.kubectl.json("get", "pod", name, "-n", self.namespace)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        statuses = [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Completed" if code == 0 else "Error",
                        "startedAt": now,
                        "finishedAt": now,
                    }
                },
            }
            for c in pod["spec"]["containers"]
        ]
        status = {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": statuses}
        self.kubectl.run(
            "patch", "pod", name, "-n", self.namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}),
        )  # fmt: skip
