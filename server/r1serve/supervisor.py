"""Several API processes in front of one engine process (`api_servers` > 1).

One API process spends ~55 us of CPU per streamed token (HTTP, SSE, JSON, detokenising), so past
~64 streams on an H200 it, not the GPU, sets the pace (docs/PERFORMANCE.md). Here `r1serve serve`
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
one. One API process that fails (an engine that died, a bug) ends the others (SIGTERM: they drain)
and the supervisor exits 1 with the failure's one-line message. The supervisor killed outright:
the engine process's lifeline ends it, and the API processes exit on their own lifelines.
"""

from __future__ import annotations

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
from r1serve.engine.engine_child import EngineChild, EngineEntry, kill_if_alive, start_engine_child

log = logging.getLogger(__name__)
STOP_SECONDS = 30.0  # the engine's exit after the last API process stopped; then it is killed


def reuseport_socket(host: str, port: int, *, listen: bool) -> socket.socket:
    """Bound with SO_REUSEPORT; the supervisor's own is not listening: it holds the port (0 picks one)
    and checks that it is free before anything starts, and receives no connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    return sock


def supervise(settings: Settings, engine_entry: EngineEntry | None = None) -> int:
    """Runs the engine process and `settings.api_servers` API processes until they have all stopped.
    `engine_entry`: a stand-in for the engine (a benchmark's; see `start_engine_child`)."""
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
            return _run(
                settings.model_copy(update={"port": port}), start_engine_child(settings, engine_entry)
            )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _run(settings: Settings, engine: EngineChild) -> int:
    assert engine.proc is not None
    ctx = mp.get_context("spawn")
    failures: mp.SimpleQueue = ctx.SimpleQueue()
    level = logging.getLogger().level
    workers = [
        ctx.Process(
            target=_api_process,
            args=(settings, EngineChild(None, [conn]), failures, level),
            name=f"r1serve-api-{k}",
        )
        for k, conn in enumerate(engine.conns)
    ]
    for worker in workers:
        worker.start()
    # The API processes hold these now: a pipe whose API process is gone must read as EOF.
    for conn in engine.conns:
        conn.close()
    log.info(
        "API processes (pids %s) on %s:%d in front of the engine process (pid %d)",
        ", ".join(str(w.pid) for w in workers), settings.host, settings.port, engine.proc.pid,
    )  # fmt: skip

    def forward(sig: int, _: FrameType | None) -> None:
        for worker in workers:
            if worker.exitcode is None and worker.pid is not None:
                os.kill(worker.pid, sig)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        failed = False
        running = list(workers)
        while running:
            wait([w.sentinel for w in running])
            for worker in [w for w in running if w.exitcode is not None]:
                running.remove(worker)
                if worker.exitcode != 0 and not failed:
                    failed = True
                    log.error("%s exited with %s: stopping the others", worker.name, worker.exitcode)
                    forward(signal.SIGTERM, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
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
    from r1serve.tp_worker import start_lifeline

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
