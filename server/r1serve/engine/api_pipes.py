"""The engine process's pipes to its API processes: one, or `api_servers` of them.

Past ~64 streams one API process cannot detokenise, serialise and stream tokens as fast as the
engine makes them (docs/PERFORMANCE.md), so several API processes may share one engine process,
each over a pipe of its own (vLLM's API-server scale-out). Each API process numbers its requests
from 0; here API process k's request r becomes r * n + k, so ids never collide and the owner of an
event is its id modulo n. Each step's events go back split by owner, each part with the engine's
stats, in which `num_added` counts that API process's adds (its queue limit compares them with the
requests it sent) and `batch_size` is left for one API process to count (every API process would
otherwise observe the same step in the shared batch-size histogram).

An API process stops with ("stop",) after its drain; the engine stops when the last one has, or
when every pipe is closed (the API processes are gone). Requests of an API process that stopped
with some still running (a drain timeout, a forced exit) or died are aborted: nobody reads them.
Sends block: an API process that stops reading its pipe (its reader thread starved) stalls the
engine for all of them once the pipe's buffer is full, as one API process would stall it alone.
"""

from __future__ import annotations

import contextlib
import threading
from multiprocessing.connection import Connection, wait

from r1serve.engine.core import Command, EngineStats, Event


class ApiPipes:
    def __init__(self, conns: list[Connection]) -> None:
        self.conns = conns
        self.n = len(conns)
        self.open = set(range(self.n))  # neither stopped nor gone
        self.added = [0] * self.n  # add commands per API process
        self.live: list[set[int]] = [set() for _ in range(self.n)]  # its unfinished requests (n > 1)
        self._lock = threading.Lock()  # the tensor-parallel monitor thread sends "fatal"

    def send_all(self, message: tuple) -> None:
        with self._lock:
            for k in sorted(self.open):
                self._send(k, message)

    def _send(self, k: int, message: tuple) -> None:
        with contextlib.suppress(OSError):  # that API process is gone
            self.conns[k].send(message)

    def _close(self, k: int) -> list[Command]:
        """API process k stopped (or is gone): its reader thread sees EOF and ends. Returns the aborts
        of its requests still in the engine."""
        with self._lock:
            self.open.discard(k)
            self.conns[k].close()
        aborts: list[Command] = [("abort", r * self.n + k) for r in sorted(self.live[k])]
        self.live[k].clear()
        return aborts

    def receive(self, block: bool) -> list[Command] | None:
        """The commands that came (waiting for one if `block`), in the engine's ids; None: stop."""
        if block and self.open:
            with contextlib.suppress(OSError):
                wait([self.conns[k] for k in self.open])
        commands: list[Command] = []
        for k in sorted(self.open):
            conn = self.conns[k]
            try:
                while conn.poll():
                    command = conn.recv()
                    if command[0] == "stop":
                        commands += self._close(k)
                        break
                    commands.append(self._to_engine(k, command))
            except (EOFError, OSError):
                commands += self._close(k)
        return commands if self.open else None

    def _to_engine(self, k: int, command: Command) -> Command:
        if self.n == 1:
            return command
        if command[0] == "add":
            self.added[k] += 1
            self.live[k].add(command[1])
        return (command[0], command[1] * self.n + k, *command[2:])

    def emit(self, events: list[Event], stats: EngineStats) -> None:
        """One "step" message to each API process, with its own requests' events."""
        if self.n == 1:
            with self._lock:
                self._send(0, ("step", events, stats))
            return
        parts: list[list[Event]] = [[] for _ in range(self.n)]
        for request_id, token_id, reason, error in events:
            owner, local_id = request_id % self.n, request_id // self.n
            parts[owner].append((local_id, token_id, reason, error))
            if reason is not None or error is not None:  # its last event
                self.live[owner].discard(local_id)
        with self._lock:
            counter = min(self.open, default=0)  # the one that counts the batch
            for k in sorted(self.open):
                counted = stats.batch_size if k == counter else 0
                self._send(k, ("step", parts[k], stats._replace(num_added=self.added[k], batch_size=counted)))
