"""A real Prometheus for the e2e tier, scraping the mirrored pods through file_sd.

Targets carry the labels the PodMonitor adds in a cluster (namespace, pod,
rollouts_pod_template_hash), so the AnalysisTemplates' queries run unchanged.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

from r1ops.e2e.procs import Proc
from r1ops.processes import free_port

# Short scrape interval: the test's analysis intervals are seconds, not minutes.
CONFIG = """global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: r1serve
    file_sd_configs:
      - files: [{targets}]
        refresh_interval: 1s
"""


class Prometheus:
    def __init__(self, workdir: Path, scrape_interval: str = "2s") -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.targets_file = self.dir / "targets.json"
        self.targets_file.write_text("[]")
        (self.dir / "prometheus.yml").write_text(
            CONFIG.format(interval=scrape_interval, targets=json.dumps(str(self.targets_file)))
        )
        self.port = 0
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (scripts/setup.sh installs it)")
        self.port = free_port()
        self.proc = Proc(
            "prometheus",
            [
                binary,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=2h",
                "--log.level=warn",
            ],
            self.dir / "prometheus.log",
        ).start()
        self.proc.wait_until(self._ready, 60, "prometheus /-/ready")
        return self

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
            return resp.status == 200

    def set_targets(self, groups: list[dict]) -> None:
        """file_sd groups: [{"targets": ["127.0.0.1:port"], "labels": {...}}]; written atomically."""
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets_file)

    def query(self, promql: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())["data"]["result"]

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
