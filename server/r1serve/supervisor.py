"""Several API processes in front of one engine process (`api_servers` > 1).

One API process spends 53-79 us of CPU per streamed token (HTTP, SSE, JSON, detokenising; 79 on
an H200 host's cores, 53 on the 2-core development VM), so past ~64 streams on an H200 it, not the
GPU, sets the pace (docs/PERFORMANCE.md). Here `r1serve serve`
becomes a supervisor: it starts the engine process with one pipe per API process (`ApiPipes`),
and the API processes, each a whole server (routes, tokenizer, drain) listening on the same port
with SO_REUSEPORT, so the kernel spreads connections over them by their addresses. (One listening
socket shared by all was lopsided on the development VM: 16 streams that connected at once split
14/2 or worse in 3 of 8 tries, one process's event loop accepting the burst, and with keep-alive
that lasts. With SO_REUSEPORT the worst of 8 was 11/5.) Metrics: prometheus-client's multiprocess
mode (a fresh directory per run), so a scrape that lands on any API process reports every
process's counters and histograms; the engine gauges are the engine's, the same in each.

Signals: the API processes run in process groups of their own, and the supervisor forwards what it
gets (a pod's SIGTERM, or a terminal's Ctrl-C: a second one forces the exit, as with one process).
Each drains on its own and sends the engine its "stop"; the engine process exits after the last
one (an engine still loading is killed). An API process that a forwarded signal ends before it
could handle it (still importing) has stopped, not failed. One API process that fails (an engine
that died, a bug) ends the others (SIGTERM: they drain) and the supervisor exits 1 with the
failure's one-line message. The supervisor killed outright: the engine process's lifeline ends it,
and the API processes exit on their own lifelines.

A probe reaches one API process, whichever the kernel picks; they all turn ready on the engine's
one "ready" message, each once its tokenizer has loaded, so within moments of each other.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
from multiprocessing.connection import wait
from types import FrameType

from r1serve.config import Settings
from r1serve.engine.engine_child import (
    STOP_SECONDS,
    EngineChild,
    EngineEntry,
    kill_if_alive,
    start_engine_child,
    start_lifeline,
)

log = logging.getLogger(__name__)


def reuseport_socket(host: str, port: int, *, listen: bool) -> socket.socket:
    """Bound with SO_REUSEPORT; the supervisor's own is not listening: it holds the port (0 picks one)
    and checks that it is free before anything starts, and receives no connections. SO_REUSEADDR as
    uvicorn's own sockets have it: a port whose old connections are in TIME_WAIT is free to bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    return sock


def supervise(settings: Settings, engine_entry: EngineEntry | None = None) -> int:
    """Runs the engine process and `settings.api_servers` API processes until they have all stopped.
    `engine_entry`: a stand-in for the engine (a benchmark's; see `start_engine_child`)."""
    supervisor = Supervisor()
    previous = {sig: signal.signal(sig, supervisor.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Before any API process starts: prometheus-client reads it when first imported.
    metrics_dir = tempfile.mkdtemp(prefix="r1serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        try:
            held = reuseport_socket(settings.host, settings.port, listen=False)
        except OSError as exc:
            print(f"r1serve serve: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
            return 1
        with held:
            port = held.getsockname()[1]
            engine = start_engine_child(settings, engine_entry)
            return supervisor.run(settings.model_copy(update={"port": port}), engine)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(metrics_dir, ignore_errors=True)


class Supervisor:
    def __init__(self) -> None:
        self.workers: list[mp.process.BaseProcess] = []
        self.forwarded: set[int] = set()  # signals sent on: an API process they end is not a failure

    def on_signal(self, sig: int, _: FrameType | None = None) -> None:
        self.forwarded.add(sig)
        for worker in self.workers:
            if worker.exitcode is None and worker.pid is not None:
                # it may have exited since exitcode was read
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, sig)

    def run(self, settings: Settings, engine: EngineChild) -> int:
        assert engine.proc is not None and engine.ready is not None
        ctx = mp.get_context("spawn")
        failures: mp.SimpleQueue = ctx.SimpleQueue()
        level = logging.getLogger().level
        for k, conn in enumerate(engine.conns):
            worker = ctx.Process(
                target=_api_process,
                args=(settings, EngineChild(None, [conn]), failures, level),
                name=f"r1serve-api-{k}",
            )
            worker.start()
            self.workers.append(worker)
        # The API processes hold these now: a pipe whose API process is gone must read as EOF.
        for conn in engine.conns:
            conn.close()
        log.info(
            "API processes (pids %s) on %s:%d in front of the engine process (pid %d)",
            ", ".join(str(w.pid) for w in self.workers), settings.host, settings.port, engine.proc.pid,
        )  # fmt: skip
        for sig in sorted(self.forwarded):  # came while they were starting
            self.on_signal(sig)
        failed = False
        try:
            running = list(self.workers)
            while running:
                wait([w.sentinel for w in running])
                for worker in [w for w in running if w.exitcode is not None]:
                    running.remove(worker)
                    code = worker.exitcode
                    # killed by a signal sent on before it could handle it (still importing): a stop
                    if code != 0 and -code not in self.forwarded and not failed:
                        failed = True
                        log.error("%s exited with %s: stopping the others", worker.name, code)
                        self.on_signal(signal.SIGTERM)
        finally:
            # A loaded engine exits after the last API process's "stop"; one still loading never
            # reads its pipes until loaded (minutes for a large model): it is killed.
            if engine.ready.is_set():
                engine.proc.join(STOP_SECONDS)
                if engine.proc.exitcode is None:
                    log.warning("the engine process did not exit; killing it")
            kill_if_alive(engine.proc)
        messages = []
        while not failures.empty():
            if (message := failures.get()) not in messages:
                messages.append(message)
        for message in messages:
            print(f"r1serve serve: {message}", file=sys.stderr)
        return 1 if failed or messages else 0


def _api_process(settings: Settings, engine: EngineChild, failures: mp.SimpleQueue, log_level: int) -> None:
    """One API process: the whole HTTP server, on its own socket of the port and its own pipe."""
    from r1serve.cli import LOG_FORMAT, run_api_server

    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor only; it forwards it once
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    start_lifeline()
    try:
        sock = reuseport_socket(settings.host, settings.port, listen=True)
    except OSError as exc:
        failures.put(f"cannot listen on {settings.host}:{settings.port}: {exc}")
        raise SystemExit(1) from None
    fatal = run_api_server(settings, engine, sock)
    if fatal is not None:
        failures.put(fatal)  # the supervisor prints each distinct message once
        raise SystemExit(1)
