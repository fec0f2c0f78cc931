"""The engine loop in a process of its own (vLLM V1's split), and the API process's handle on it.

In one process the engine loop and the event loop (HTTP, SSE, detokenising, JSON for every stream)
take turns at one GIL, and each step waits for HTTP work. Here the child process owns the model
runner and the `LLMEngine` (scheduler, sampler, KV cache, the per-request seeded generators, and
with tensor parallelism rank 0, which starts the other ranks from here) and runs `EngineCore`; the
API process keeps the tokenizer and everything HTTP, and imports no torch. This module is the API
process's side; the child's is `engine_main`.

One duplex pipe: commands (add, abort, stop) go down as small tuples, sent by a writer thread (the
child reads the pipe only between steps, and a few long prompts fill the socket buffer: a send on
the event loop would freeze every stream until the step ends), and each step comes back as ONE
message with every request's new token, finish reason or error plus the stats the metrics and the
queue limit read; a reader thread in the API process hands each message to the event loop in
one `call_soon_threadsafe`. The child's first message is "ready" with the sizes the API process
checks prompts against (so a rejection needs no round trip), or "error" with the message the server
exits with.

Failures: a start-up failure surfaces from `launch` as `EngineStartError` with the same message the
in-process load gives. A child that dies later ends every request in flight with an EngineError and
calls `on_failure` (the server exits non-zero), as a dead tensor-parallel worker does. The child
ignores SIGINT/SIGTERM (the API process drains, then stops it) and exits if the API process dies;
if the API process exits without stopping it (a forced second Ctrl-C skips the drain), an exit hook
kills it, since multiprocessing's own exit hook would wait for the child, and the child for it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import queue
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.util import Finalize

from r1serve.checkpoint import GenerationDefaults
from r1serve.config import Settings
from r1serve.engine.async_engine import EngineClient, FailureHook, StepHook
from r1serve.engine.core import Command
from r1serve.engine.engine_child import (
    STOP_SECONDS,
    EngineChild,
    exit_description,
    kill_if_alive,
    start_engine_child,
)
from r1serve.engine.loader import EngineStartError
from r1serve.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSizes:
    """What the child reports when ready (ModelRunner's attributes of the same names). Device and
    dtype as `str()` gives them ("cuda:0", "torch.bfloat16"): torch objects would import torch in
    the API process that unpickles them."""

    device: str
    dtype: str
    max_model_len: int
    block_size: int
    num_blocks: int
    max_num_seqs: int


@dataclass
class ModelInfo:
    """The API process's stand-in for the ModelRunner it does not hold: the attributes the routes read."""

    tokenizer: Tokenizer
    generation_defaults: GenerationDefaults
    device: str
    dtype: str
    max_model_len: int


class EngineProcess(EngineClient):
    """The API process's handle on the engine process. `launch` (blocking: the model loads) first,
    then `start` on the event loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_queue: int,
        on_step: StepHook | None = None,
        on_failure: FailureHook | None = None,  # called on the reader thread
    ) -> None:
        super().__init__(max_queue=max_queue, on_step=on_step, on_failure=on_failure)
        self.settings = settings
        self.api_servers = settings.api_servers
        self.proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._outbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()  # None ends the writer
        self._writer: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._ready = False
        self._stopping = False

    # -- start-up (on the loading thread) ------------------------------------------------------------

    def launch(self, child: EngineChild | None = None) -> ModelInfo:
        """Adopts `child` (started early by `r1serve serve`, or by the supervisor of several API
        processes, which then owns it: `child.proc` is None) or starts one, and waits until its model
        is loaded; EngineStartError if it fails."""
        child = child or start_engine_child(self.settings)
        proc, conn = child.proc, child.conn
        self.proc = proc  # from now on `_shutdown` may kill it
        # At exit, before multiprocessing joins the child: it must not be reported as a failure
        Finalize(None, self._abandon, exitpriority=11)
        self._conn = conn
        if self._stopping and proc is not None:  # a non-daemon child would block the exit
            proc.kill()
        wait([conn] if proc is None else [conn, proc.sentinel])
        message = None
        with contextlib.suppress(EOFError, OSError):
            message = conn.recv() if conn.poll() else None
        if message is not None and message[0] == "error":
            if proc is not None:
                proc.join(STOP_SECONDS)
            raise EngineStartError(message[1])
        if message is None or message[0] != "ready":
            if self._stopping:
                raise EngineStartError("the server stopped while the engine process was starting")
            how = self._exit_description()
            raise EngineStartError(f"the engine process {how} while loading {self.settings.model}")
        sizes: EngineSizes = message[1]
        self.max_model_len, self.block_size = sizes.max_model_len, sizes.block_size
        self.num_blocks, self.max_num_seqs = sizes.num_blocks, sizes.max_num_seqs
        # Started here, not in `_launch`: a stop must reach a child that is ready but never served.
        self._writer = threading.Thread(target=self._write, name="r1serve-engine-writer", daemon=True)
        self._writer.start()
        self._ready = True
        return model_info(self.settings, sizes)

    # -- serving -----------------------------------------------------------------------------------

    def _launch(self) -> None:
        self._reader = threading.Thread(target=self._read, name="r1serve-engine-reader", daemon=True)
        self._reader.start()

    def _send(self, command: Command) -> None:
        self._outbox.put(command)

    def _write(self) -> None:
        conn = self._conn
        assert conn is not None
        while (command := self._outbox.get()) is not None:
            with contextlib.suppress(OSError):  # the child is gone: the reader sees EOF, fails the streams
                conn.send(command)

    def _read(self) -> None:
        loop, conn = self._loop, self._conn
        assert loop is not None and conn is not None
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "step":
                loop.call_soon_threadsafe(self._deliver, message[1], message[2])
            elif message[0] == "fatal":  # a tensor-parallel worker died: the engine is unusable
                self.fail(message[1])
        if self._stopping:
            return
        self.fail(f"the engine process died ({self._exit_description()})")

    def _exit_description(self) -> str:
        if self.proc is None:  # the supervisor's child: only its pipe is known here
            return "closed its pipe"
        self.proc.join(1.0)
        return exit_description(self.proc.exitcode)

    # -- shutdown ----------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Ends the child: a "stop" once it serves (it closes the tensor-parallel workers), a kill while
        it still loads or if it does not exit in time. Safe before `launch` returned. One API process
        of several only sends its "stop": the supervisor ends the engine process after the last."""
        self._stopping = True
        if self._conn is None:
            return
        proc = self.proc
        if self._ready:
            self._send(("stop",))
            if proc is not None:
                proc.join(STOP_SECONDS)
        self._outbox.put(None)  # the writer sends what is queued (the stop included), then ends
        if proc is not None and proc.exitcode is None:
            if self._ready:
                log.warning("the engine process did not exit; killing it")
            kill_if_alive(proc)
        for thread in (self._writer, self._reader):
            if thread is not None:
                thread.join(5.0)
        if self._conn is not None:
            self._conn.close()

    def _abandon(self) -> None:
        """At this process's exit, a child never stopped is killed (see `launch`)."""
        self._stopping = True  # the reader must not report the kill as an engine failure
        if self.proc is not None:
            kill_if_alive(self.proc)


def model_info(settings: Settings, sizes: EngineSizes) -> ModelInfo:
    """The tokenizer and generation defaults, loaded in the API process (the checkpoint has loaded
    in the child already, so these read files known to be good)."""
    from r1serve.checkpoint import load_config, load_generation_defaults

    try:
        config = load_config(settings.model)
        defaults = load_generation_defaults(settings.model, config)
        tokenizer = Tokenizer(settings.model)
    except Exception as exc:
        raise EngineStartError(f"loading {settings.model} failed: {type(exc).__name__}: {exc}") from exc
    return ModelInfo(tokenizer, defaults, sizes.device, sizes.dtype, sizes.max_model_len)
