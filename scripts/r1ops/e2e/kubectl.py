"""kubectl (the one built with the control plane) bound to the e2e cluster's kubeconfig."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class KubectlError(RuntimeError):
    pass


@dataclass(frozen=True)
class Kubectl:
    binary: str
    kubeconfig: Path

    def run(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> str:
        res = subprocess.run(
            [self.binary, f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
        return res.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json"))

    def items(self, kind: str, namespace: str, selector: str | None = None) -> list[dict]:
        args = ["get", kind, "-n", namespace]
        if selector:
            args += ["-l", selector]
        return self.json(*args)["items"]

    def apply(self, manifest: str, *extra: str) -> str:
        return self.run("apply", "--server-side", "--force-conflicts", "-f", "-", *extra, stdin=manifest)

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
        """Poll `check` until it returns something truthy; the last value is in the error."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(interval)
        raise TimeoutError(f"{what}: not reached after {timeout:.0f}s (last: {last!r})")
