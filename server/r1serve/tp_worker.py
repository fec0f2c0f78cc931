"""The processes of tensor-parallel ranks 1..N-1, and rank 0's handle on them.

Rank 0 is the `ModelRunner` of the server process. It starts one process per other rank (spawned,
so each initialises CUDA afresh on its own GPU), and each builds the same `ModelRunner` as its rank.
Loading, the KV-cache profiling run, the agreement on the block count and the CUDA graph captures
then issue the same collectives in the same order on every rank, with no message needed. While
serving, rank 0 sends every step's batch to the workers (pickled once) before running it itself; a
worker runs what it receives, so the collectives inside the step meet. `None` ends the workers.

Steps travel over a pipe per worker rather than `broadcast_object_list` on a gloo group: an idle
server leaves the workers waiting for their next step indefinitely, which a collective would turn
into a timeout, and the pipe carries the workers' start-up reports and errors the other way.

Failures: a worker that fails to start reports its error through the pipe, and rank 0 raises it
(`TensorParallelError`) instead of waiting at a collective the worker will never join. A worker that
dies later is noticed by a monitor thread on rank 0, which logs it, calls `on_failure` (the server
exits) and then tries to abort the NCCL group, on a thread of its own, so that a step waiting for the
dead rank returns. That abort may never return while CUDA graphs that captured the group's
collectives exist (pytorch#115388), so nothing waits for it but `close`, and only for a while. A
worker exits as soon as rank 0's process is gone, so none is left behind holding a GPU.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import pickle
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from r1serve.engine.engine_child import exit_description, start_lifeline
from r1serve.model.parallel import destroy_process_group

log = logging.getLogger(__name__)
JOIN_SECONDS = 10.0  # a worker's clean exit after the goodbye; then it is killed
ABORT_SECONDS = 10.0  # how long `close` waits for an abort a failure started


class TensorParallelError(RuntimeError):
    """A tensor-parallel worker failed or died; the message names its rank and says why."""


class Workers:
    """Rank 0's handle on the worker processes of ranks 1..size-1."""

    def __init__(
        self,
        size: int,
        model_dir: Path,
        settings: dict[str, Any],
        device: torch.device,
    ) -> None:
        if dist.is_initialized():
            raise ValueError("a process group exists already: one tensor-parallel ModelRunner per process")
        self.size = size
        self.error: str | None = None
        self.on_failure: Callable[[str], None] | None = None
        self._abort_on_failure = device.type == "cuda"  # NCCL waits for a dead peer forever; gloo does not
        self._closing = False
        self._abort: threading.Thread | None = None  # the NCCL abort a failure started
        self._lock = threading.RLock()  # the monitor and a failed step may both read a dead worker's pipe
        self._reports: dict[int, str] = {}
        # The rendezvous store listens on 127.0.0.1 only, on a port the kernel picked.
        listener = socket.create_server(("127.0.0.1", 0))
        self.store = dist.TCPStore(
            "127.0.0.1",
            listener.getsockname()[1],
            size,
            is_master=True,
            wait_for_workers=False,
            master_listen_fd=listener.detach(),
        )
        ctx = mp.get_context("spawn")
        self._stop_r, self._stop_w = ctx.Pipe(duplex=False)
        self.conns: list[Connection] = []
        self.procs: list[mp.process.BaseProcess] = []
        for rank in range(1, size):
            conn, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(rank, size, self.store.port, model_dir, settings, child, logging.getLogger().level),
                name=f"r1serve-tp{rank}",
                daemon=True,  # multiprocessing terminates daemons when this process exits normally
            )
            proc.start()
            child.close()  # the worker holds the only other end: it reads EOF when this process dies
            self.conns.append(conn)
            self.procs.append(proc)

    # -- start-up ------------------------------------------------------------------------------------

    def rendezvous(self) -> dist.Store:
        """Waits until every worker has loaded its shard (or raises what the first failed one said),
        then returns the store all ranks join the process group through."""
        waiting = set(range(1, self.size))
        while waiting:
            handles = {self.conns[r - 1]: r for r in waiting}
            handles |= {self.procs[r - 1].sentinel: r for r in waiting}
            for handle in wait(list(handles)):
                rank = handles[handle]
                if handle is self.conns[rank - 1] and self._read(rank) == "loaded":
                    waiting.discard(rank)
                elif rank in waiting:
                    why = self._death(rank)
                    raise TensorParallelError(f"tensor-parallel rank {rank} failed to start: {why}")
        threading.Thread(target=self._monitor, name="r1serve-tp-monitor", daemon=True).start()
        return self.store

    def _read(self, rank: int) -> str | None:
        """The worker's next report ("loaded"), recording an error report; None at EOF."""
        try:
            kind, *text = self.conns[rank - 1].recv()
        except (EOFError, OSError):
            return None
        if kind == "error":
            with self._lock:
                self._reports.setdefault(rank, text[0])
        return kind

    def _death(self, rank: int) -> str:
        """Why worker `rank` is gone (or going): its own error report, else how it exited."""
        proc, conn = self.procs[rank - 1], self.conns[rank - 1]
        with self._lock:
            proc.join(1.0)  # a worker reports before it exits: once it has, the report is in the pipe
            while rank not in self._reports and conn.poll(0) and self._read(rank) is not None:
                pass
            if rank in self._reports:
                return self._reports[rank]
        # Two threads polling one child (this monitor and a join elsewhere) race for its exit status:
        # the loser sees None for a moment, until the winner has stored it
        for _ in range(20):
            if proc.exitcode is not None:
                break
            time.sleep(0.05)
        return exit_description(proc.exitcode)

    # -- serving -------------------------------------------------------------------------------------

    def send(self, batch: object) -> None:
        """Hands a step (or None: exit) to every worker."""
        if self.error is None and batch is not None:
            # A collective with a dead peer never completes on NCCL: the GPU waits for it and rank 0
            # hangs in its next sync (seen on two H200s when a worker was killed between steps).
            # Checking the workers first turns a death before the step into an error, not a hang.
            dead = next((r for r, p in enumerate(self.procs, start=1) if p.exitcode is not None), None)
            if dead is not None:
                self._fail(f"tensor-parallel rank {dead} died: {self._death(dead)}")
        if self.error is not None:
            raise TensorParallelError(self.error)
        data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        for conn in self.conns:
            conn.send_bytes(data)

    def death(self, timeout: float = 2.0) -> str | None:
        """Which worker died and why, waiting up to `timeout` for one to be gone (a dead peer is what
        usually breaks a collective); None while all live."""
        wait([p.sentinel for p in self.procs], timeout)
        dead = next((r for r, p in enumerate(self.procs, start=1) if p.exitcode is not None), None)
        return None if dead is None else f"tensor-parallel rank {dead} died: {self._death(dead)}"

    def step_failed(self, exc: BaseException) -> TensorParallelError:
        """Rank 0's step raised after the workers got it: a worker died, or rank 0 failed on its own.
        Either way the ranks are out of step for good, so every later step fails too."""
        if self.error is not None:  # failed before: no need to wait for a death again
            return TensorParallelError(self.error)
        self._fail(
            self.death() or f"tensor-parallel rank 0 failed in a step, the ranks are out of step: {exc!r}"
        )
        return TensorParallelError(self.error)

    def _fail(self, message: str) -> None:
        with self._lock:
            if self.error is not None:
                return
            self.error = message
            if self._abort_on_failure:  # on its own thread: it may never return (see the module doc)
                self._abort = threading.Thread(
                    target=destroy_process_group, args=(True,), name="r1serve-tp-abort", daemon=True
                )
                self._abort.start()
        log.error("%s", message)
        if self.on_failure is not None:
            self.on_failure(message)

    def _monitor(self) -> None:
        sentinels = {p.sentinel: rank for rank, p in enumerate(self.procs, start=1)}
        ready = wait([*sentinels, self._stop_r])
        if self._closing or self._stop_r in ready:
            return
        rank = sentinels[next(h for h in ready if h in sentinels)]
        self._fail(f"tensor-parallel rank {rank} died: {self._death(rank)}")

    # -- shutdown ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Ends the workers (a goodbye, then a kill after JOIN_SECONDS) and leaves the process group."""
        if self._closing:
            return
        self._closing = True
        self._stop_w.send(None)
        for conn in self.conns:
            with contextlib.suppress(OSError):  # already gone
                conn.send_bytes(pickle.dumps(None))
        with self._lock:
            abort, self._abort_on_failure = self._abort, False  # from here on, only this close ends the group
        if abort is None:
            destroy_process_group(abort=self.error is not None)
        else:
            abort.join(ABORT_SECONDS)
            if abort.is_alive():
                log.warning("the NCCL abort after the failure has not returned; leaving the process group")
        for proc in self.procs:
            proc.join(JOIN_SECONDS)
            if proc.exitcode is None:
                log.warning("tensor-parallel worker %s did not exit; killing it", proc.name)
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()
        self.store = None


class Leader:
    """A worker's link to rank 0: start-up reports out, steps in."""

    def __init__(self, rank: int, store_port: int, conn: Connection) -> None:
        self.rank = rank
        self.store_port = store_port
        self.conn = conn

    def rendezvous(self) -> dist.Store:
        self.conn.send(("loaded",))
        return dist.TCPStore("127.0.0.1", self.store_port, is_master=False)

    def next_step(self) -> object:
        """The next batch from rank 0; None means exit. EOFError: rank 0 is gone."""
        return pickle.loads(self.conn.recv_bytes())

    def report(self, exc: BaseException) -> None:
        with contextlib.suppress(OSError):  # rank 0 is gone
            self.conn.send(("error", f"{type(exc).__name__}: {exc}"))

    def close(self) -> None:
        destroy_process_group()


def worker_main(
    rank: int,
    size: int,
    store_port: int,
    model_dir: Path,
    settings: dict[str, Any],
    conn: Connection,
    log_level: int,
) -> None:
    """Entry point of the process of tensor-parallel rank `rank` (> 0)."""
    from r1serve.model_runner import ModelRunner

    # A spawn child inherits ignored signals: from an engine process, SIGTERM would be ignored too, and
    # multiprocessing's terminate() of this daemon at rank 0's exit would do nothing while rank 0's
    # exit waits for it. SIGINT stays ignored: a Ctrl-C reaches the whole process group, and rank 0
    # decides when the ranks stop (after the drain), as the engine process does.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s %(levelname)s tp-rank-{rank} %(name)s: %(message)s"
    )
    start_lifeline()
    leader = Leader(rank, store_port, conn)
    try:
        runner = ModelRunner(model_dir, **settings, tensor_parallel_size=size, _leader=leader)
    except BaseException as exc:
        log.exception("start-up failed")
        leader.report(exc)
        raise SystemExit(1) from None
    try:
        with torch.inference_mode():
            while (batch := leader.next_step()) is not None:
                runner.execute(batch)
    except EOFError:
        raise SystemExit(1) from None  # rank 0 is gone without a goodbye
    except BaseException as exc:
        log.exception("step failed")
        leader.report(exc)
        raise SystemExit(1) from None
    runner.close()
