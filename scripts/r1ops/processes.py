"""Start and stop local `r1serve` processes: shared by the tests, the local stack and the e2e harness."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """One `r1serve serve` process on a loopback address.

    `settings` become `R1SERVE_<NAME>` environment variables, exactly as the Kubernetes ConfigMap
    sets them, so the tests exercise the same configuration path as a pod.
    """

    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    settings: dict[str, object] = field(default_factory=dict)
    log_path: Path | None = None
    # CPUs the server and every process it spawns may run on, as taskset takes them ("0-3"): a pod
    # with an integer CPU limit under the kubelet's static CPU manager gets exactly that many cores.
    cpus: str | None = None
    proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, ready_timeout: float = 120.0) -> ServerProcess:
        if not self.port:
            self.port = free_port(self.host)
        env = dict(os.environ)
        env.update({f"R1SERVE_{k.upper()}": str(v) for k, v in self.settings.items()})
        env.setdefault("PYTHONUNBUFFERED", "1")
        cmd = [
            sys.executable,
            "-m",
            "r1serve.cli",
            "serve",
            str(self.model_dir),
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        if self.cpus is not None:
            # taskset sets the affinity before the interpreter starts, so no child escapes it
            cmd = ["taskset", "--cpu-list", self.cpus, *cmd]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # Several API processes (api_servers) each answer some probes: ready when a few in a row
        # (each on a new connection, so spread over them) say so.
        needed = 8 if int(self.settings.get("api_servers", 1)) > 1 else 1
        in_a_row = 0
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"r1serve exited with {self.proc.returncode} before it was ready{self._log_tail()}"
                )
            try:
                ok = httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                ok = False
            in_a_row = in_a_row + 1 if ok else 0
            if in_a_row >= needed:
                return
            if not ok:
                time.sleep(0.2)
        raise TimeoutError(f"r1serve at {self.base_url} not ready after {timeout:.0f}s{self._log_tail()}")

    def _log_tail(self, lines: int = 12) -> str:
        """The end of the server's log, for an error that would otherwise say only that it failed."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "; its log ends:\n" + "\n".join(tail) if tail else ""

    def terminate(self) -> None:
        """Send SIGTERM (the server drains) without waiting."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
