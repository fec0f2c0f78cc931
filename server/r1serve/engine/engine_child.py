"""Starting the engine process, with nothing heavier imported than `multiprocessing`, and the
lifeline and exit wording every child process of the server shares.

`r1serve serve` starts the child first thing (`engine_process=true`): it imports torch and loads the
model while the API process imports its own web stack, instead of after (on an H200 the engine
process made the 1.5B shape ready 4.5 s later than the in-process thread, most of it the two
processes importing one after the other). `EngineProcess.launch` adopts the child, or starts one here.
With an engine process the API processes never import torch: only the child runs the model
(`engine_main`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from multiprocessing.util import Finalize

from r1serve.config import Settings

STOP_SECONDS = 30.0  # the engine process's clean exit after its last "stop"; then it is killed


@dataclass
class EngineChild:
    """A started engine process and the API processes' ends of its pipes (one per API process).

    `proc` is None in an API process of several (`api_servers` > 1): the supervisor started the engine
    process and owns it; that API process holds only its pipe."""

    proc: mp.process.BaseProcess | None
    conns: list[Connection]
    ready: Event | None = None  # set by the engine process once its model is loaded

    @property
    def conn(self) -> Connection:
        (conn,) = self.conns
        return conn

    def kill(self) -> None:
        if self.proc is not None:
            kill_if_alive(self.proc)


def exit_description(code: int | None) -> str:
    """How a child process ended, from its exit code, in the words the error messages use."""
    return f"exited with {f'signal {-code}' if code is not None and code < 0 else f'code {code}'}"


def _exit_with_parent() -> None:
    parent = mp.parent_process()
    if parent is not None:
        parent.join()  # returns when the parent process has exited, however it ended
        os._exit(1)


def start_lifeline() -> None:
    """In a spawned child: exit as soon as the parent process is gone, so no child outlives the server
    holding a GPU (a SIGKILL of the parent runs none of its clean-up)."""
    threading.Thread(target=_exit_with_parent, name="r1serve-lifeline", daemon=True).start()


def kill_if_alive(proc: mp.process.BaseProcess) -> None:
    if proc.exitcode is None:
        proc.kill()
        proc.join()


EngineEntry = Callable[[Settings, list[Connection], int, Event], None]


def start_engine_child(settings: Settings, entry: EngineEntry | None = None) -> EngineChild:
    """`entry(settings, conns, log_level, ready)` runs in the child: the engine (`engine_main`) unless
    a benchmark puts a stand-in there (a picklable, module-level callable). One pipe per API process
    (`settings.api_servers`); `ready` is set once the model is loaded (the supervisor of several API
    processes reads it: only a loaded engine gets a "stop" to wait for)."""
    ctx = mp.get_context("spawn")
    pipes = [ctx.Pipe() for _ in range(settings.api_servers)]
    ready = ctx.Event()
    # Not a daemon: daemonic processes may not have children, and rank 0 starts the
    # tensor-parallel workers. The child's lifeline ends it with this process instead.
    proc = ctx.Process(
        target=entry or _main,
        args=(settings, [child_end for _, child_end in pipes], logging.getLogger().level, ready),
        name="r1serve-engine",
        daemon=False,
    )
    proc.start()
    for _, child_end in pipes:
        child_end.close()  # the child holds the only other ends: EOF here means it is gone
    child = EngineChild(proc, [end for end, _ in pipes], ready)
    # multiprocessing's exit hook join()s a non-daemon child, which waits for this process to exit:
    # a deadlock whenever this process exits without stopping it (a forced second Ctrl-C, a start-up
    # error before the server adopted it). Finalizers of priority >= 0 run before that join; after a
    # clean stop this one finds the child gone.
    Finalize(None, child.kill, exitpriority=10)
    return child


def _main(settings: Settings, conns: list[Connection], log_level: int, ready: Event) -> None:
    """The child's entry point: the heavy imports happen here, in the child."""
    from r1serve.engine.engine_main import engine_main

    engine_main(settings, conns, log_level, ready)
