"""`r1ops analyze` beside the real controller: same templates, same args, same Prometheus, same time.

As soon as the controller creates its AnalysisRun, the dry run starts with the run's resolved args
(canary hash, namespace, thresholds, Prometheus address) on the manifests that were applied, so the
two verdicts can be compared.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from r1ops.e2e.scenario import Scenario


def _analysis_templates(rollout: dict) -> list[str]:
    strategy = rollout["spec"]["strategy"]
    spec = (
        strategy["canary"]["analysis"]
        if "canary" in strategy
        else strategy["blueGreen"]["prePromotionAnalysis"]
    )
    return [t["templateName"] for t in spec["templates"]]


class DryRun:
    def __init__(self, scenario: Scenario, timeout: float = 300) -> None:
        self.sc = scenario
        self.timeout = timeout
        self.known = {r["metadata"]["name"] for r in scenario.analysis_runs()}
        self.result = scenario.dir / f"dry-run-{scenario.versions}.json"
        self.output = ""
        self.error: str | None = None
        self.proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, name="dry-run", daemon=True)
        self._stop = threading.Event()

    def __enter__(self) -> DryRun:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self._stop.set()
            if self.proc and self.proc.poll() is None:
                self.proc.kill()
        self._thread.join(self.timeout)

    def _new_run(self) -> dict | None:
        for run in self.sc.analysis_runs():
            if run["metadata"]["name"] not in self.known:
                return run
        return None

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        run = None
        while run is None and time.monotonic() < deadline and not self._stop.is_set():
            run = self._new_run()
            time.sleep(1)
        if run is None:
            self.error = "the controller created no AnalysisRun"
            return
        args = [f"--arg={a['name']}={a['value']}" for a in run["spec"].get("args", []) if "value" in a]
        templates = [f"--template={t}" for t in _analysis_templates(self.sc.rollout())]
        cmd = [sys.executable, "-m", "r1ops.cli", "analyze", str(self.sc.manifests), *templates, *args]
        cmd += [f"--json={self.result}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            self.output, _ = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output, _ = self.proc.communicate()
            self.error = "r1ops analyze did not finish"

    def phase(self) -> str:
        """The dry run's verdict (waits for it to finish)."""
        self._thread.join(self.timeout)
        if self.error:
            return f"error: {self.error}"
        if not self.result.exists():
            return f"no result (exit {self.proc.returncode if self.proc else None})"
        return json.loads(self.result.read_text())["phase"]
