"""A real Prometheus on 127.0.0.1 with a throwaway config and TSDB: tests, the local stack and the e2e
harness use it to scrape `r1serve` and evaluate the same PromQL the AnalysisTemplates run."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from r1ops.processes import free_port


class PrometheusError(RuntimeError):
    pass


@dataclass
class ScrapeTarget:
    address: str  # host:port
    labels: Mapping[str, str] = field(default_factory=dict)  # e.g. pod, rollouts_pod_template_hash


@dataclass
class PrometheusProcess:
    """`prometheus` scraping `scrape_targets` every `scrape_interval`; `labels` go on every target."""

    scrape_targets: Sequence[str | ScrapeTarget]
    labels: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    host: str = "127.0.0.1"
    scrape_interval: str = "1s"
    rule_files: Sequence[Path] = ()
    data_dir: Path | None = None  # default: a temp dir removed on stop()
    log_path: Path | None = None
    binary: str = "prometheus"
    proc: subprocess.Popen | None = None
    _tmp: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self) -> dict[str, Any]:
        static = []
        for target in self.scrape_targets:
            t = target if isinstance(target, ScrapeTarget) else ScrapeTarget(target)
            static.append({"targets": [t.address], "labels": {**self.labels, **t.labels}})
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "rule_files": [str(Path(p).resolve()) for p in self.rule_files],
            "scrape_configs": [{"job_name": "r1serve", "metrics_path": "/metrics", "static_configs": static}],
        }

    def start(self, timeout: float = 60.0) -> PrometheusProcess:
        exe = shutil.which(self.binary)
        if exe is None:
            raise PrometheusError(f"{self.binary} not found on PATH (scripts/setup.sh installs it)")
        if not self.port:
            self.port = free_port(self.host)
        self._tmp = Path(tempfile.mkdtemp(prefix="r1-prometheus-"))
        config = self._tmp / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=2))  # JSON is valid YAML
        cmd = [
            exe,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.data_dir or self._tmp / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",
        ]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode} (see {self.log_path})")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise PrometheusError(f"prometheus at {self.url} not ready after {timeout:.0f}s")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (each item has `metric` and `value`)."""
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = resp.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{expr}: {body.get('error', resp.text)}")
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_value(self, expr: str) -> float | None:
        """The single number `expr` evaluates to, or None when the result is empty."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr}: {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def wait_for(
        self, expr: str, ok: Callable[[float], bool] = lambda v: v == v, timeout: float = 60.0
    ) -> float:
        """Poll `expr` until it yields a number that satisfies `ok` (default: any non-NaN number)."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while time.monotonic() < deadline:
            last = self.query_value(expr)
            if last is not None and ok(last):
                return last
            time.sleep(0.5)
        raise PrometheusError(f"{expr}: no satisfying value after {timeout:.0f}s (last: {last})")

    def targets_up(self) -> int:
        return int(self.query_value("sum(up)") or 0)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> PrometheusProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
