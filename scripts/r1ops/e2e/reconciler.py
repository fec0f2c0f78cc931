"""What the harness's stand-ins for cluster components share: a thread that brings what runs on
this machine in line with what the API server says, once a second, until its context exits.

Errors in a pass are kept, not raised, so one flaky `kubectl` call does not kill the loop; the
scenario reports them at the end (`Scenario.raise_harness_errors`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Self

from r1ops.e2e.procs import Proc


class Reconciler:
    thread_name = "reconciler"

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)

    def __enter__(self) -> Self:
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.shutdown()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception as exc:
                self.errors.append(f"{self.thread_name}: {exc}")
            self._stop.wait(1.0)

    def reconcile(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        """Stops what the passes started; runs after the loop has ended."""


class ProcessReconciler(Reconciler):
    """A reconciler whose passes start local processes, keyed by the object they stand for."""

    def __init__(self, logdir: Path) -> None:
        super().__init__(logdir)
        self.running: dict[str, Proc] = {}

    def shutdown(self) -> None:
        for proc in self.running.values():
            proc.stop()
        self.running.clear()
