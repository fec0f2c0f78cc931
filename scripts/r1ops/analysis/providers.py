"""Metric providers the dry run can execute: Prometheus (live queries) and, on request, Argo's job.

The Prometheus provider mirrors metricproviders/prometheus: a vector becomes a list of floats, a
scalar a float, anything else is an Error; a query or condition error is an Error measurement.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

import httpx

from r1ops.analysis.conditions import evaluate_result
from r1ops.analysis.expr import ExprError
from r1ops.analysis.phases import Phase
from r1ops.analysis.run import Measurement, Provider
from r1ops.analysis.spec import Metric

ADDRESS_ENV = "ARGO_ROLLOUTS_PROMETHEUS_ADDRESS"
IMAGE_DIR = "/loadtests/"  # where loadtests/Dockerfile puts the load test


def format_sample(value: float) -> str:
    """Go's model.SampleValue.String(): shortest decimal, no exponent; NaN, +Inf, -Inf."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _is_url(text: str) -> bool:
    u = urlparse(text)
    return bool(u.scheme and u.netloc)


class PrometheusProvider:
    def measure(self, metric: Metric) -> Measurement:
        spec = metric.provider["prometheus"] or {}
        address = spec.get("address") or os.environ.get(ADDRESS_ENV, "")
        if not address:
            return Measurement(Phase.ERROR, message="prometheus address is not configured")
        if not _is_url(address):
            return Measurement(Phase.ERROR, message=f"prometheus address is not in url format: {address!r}")
        timeout = float(spec.get("timeout") or 30)
        try:
            resp = httpx.get(
                f"{address.rstrip('/')}/api/v1/query", params={"query": spec["query"]}, timeout=timeout
            )
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            return Measurement(Phase.ERROR, message=f"query failed: {exc}")
        if body.get("status") != "success":
            return Measurement(
                Phase.ERROR, message=f"{body.get('errorType', 'error')}: {body.get('error', resp.text)}"
            )
        data = body["data"]
        if data["resultType"] == "vector":
            result: object = [float(s["value"][1]) for s in data["result"]]
            shown = "[" + ",".join(format_sample(v) for v in result) + "]"  # type: ignore[attr-defined]
        elif data["resultType"] == "scalar":
            result = float(data["result"][1])
            shown = format_sample(result)  # type: ignore[arg-type]
        else:
            return Measurement(Phase.ERROR, message="Prometheus metric type not supported")
        try:
            phase = evaluate_result(result, metric.success_condition, metric.failure_condition)
        except ExprError as exc:
            return Measurement(Phase.ERROR, value=shown, message=str(exc))
        return Measurement(phase, value=shown)


class SkippedProvider:
    """A provider that cannot run on this machine: reported, never part of the verdict."""

    def __init__(self, why: str):
        self.why = why

    def measure(self, metric: Metric) -> Measurement:
        return Measurement(Phase.SKIPPED, message=self.why)


class LocalJobProvider:
    """Runs the job's first container command locally (the load-test image's /app is loadtests/)."""

    def __init__(self, workdir: Path, timeout: float = 600):
        self.workdir = workdir
        self.timeout = timeout

    def _local(self, arg: str) -> str:
        """The image's /loadtests/... is this repository's loadtests/ folder."""
        return str(self.workdir / arg[len(IMAGE_DIR) :]) if arg.startswith(IMAGE_DIR) else arg

    def measure(self, metric: Metric) -> Measurement:
        pod = metric.provider["job"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        argv = [self._local(a) for a in (*container.get("command", []), *container.get("args", []))]
        if not argv:
            return Measurement(Phase.ERROR, message="job container has no command/args to run locally")
        # The venv's own tools first (locust), as the image has them on its PATH.
        search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        argv[0] = shutil.which(argv[0], path=search) or argv[0]
        env = dict(os.environ)
        env.update({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
        try:
            proc = subprocess.run(
                argv,
                cwd=self.workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Measurement(Phase.ERROR, message=f"job command failed to run: {exc}")
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        # Argo's job provider: a Complete job is Successful, a Failed job is Failed.
        phase = Phase.SUCCESSFUL if proc.returncode == 0 else Phase.FAILED
        return Measurement(phase, value=f"exit {proc.returncode}", message=tail[0][:200])


def provider_factory(run_jobs: bool, job_workdir: Path) -> Callable[[Metric], Provider]:
    prometheus = PrometheusProvider()
    job = LocalJobProvider(job_workdir) if run_jobs else SkippedProvider("job provider: not run locally")

    def provider_for(metric: Metric) -> Provider:
        kind = metric.provider_type
        if kind == "prometheus":
            return prometheus
        if kind == "job":
            return job
        return SkippedProvider(f"{kind} provider: not supported by the dry run")

    return provider_for
