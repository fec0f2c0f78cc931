"""The asyncio side of the engine, and the engine loop in a thread of the server process.

`EngineClient` is what the API talks to: it admits requests (the context check and the queue limit,
answered without asking the engine), hands each a stream, and delivers each step's events to the
streams in one event-loop callback. The loop itself (`EngineCore`) runs either on a thread of this
process (`AsyncEngine`, here) or in a process of its own (`engine_process.EngineProcess`), chosen by
the `engine_process` setting.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import queue
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from r1serve.engine.admission import check_prompt
from r1serve.engine.core import Command, EngineCore, EngineStats, Event
from r1serve.engine.sequence import FinishReason, SamplingParams

if TYPE_CHECKING:  # the engine and torch: loaded by whoever builds one (engine.loader)
    from r1serve.engine.llm_engine import LLMEngine

log = logging.getLogger(__name__)

# The engine loop's thread (or the thread reading the engine process's pipe) drops the GIL in every
# torch call and pipe read, and must take it back from the event loop, which holds it while it
# streams tokens to the clients. A thread that wants the GIL gets it only when the holder blocks or
# after the switch interval, Python's default 5 ms: at 64 streams that can come back several times
# in one step and be the inter-token latency tail. 0.5 ms bounds each wait at a tenth of that, for a
# few microseconds of hand-over cost a switch. Process-wide, so it is set while an engine runs.
SWITCH_INTERVAL_S = 0.0005


class QueueFull(Exception):
    """The waiting queue is at its limit: the client should retry later (HTTP 429)."""


class EngineError(RuntimeError):
    """The engine failed while computing this request (HTTP 500)."""


@dataclass(slots=True)
class TokenEvent:
    token_ids: list[int]
    finish_reason: FinishReason | None = None
    error: Exception | None = None
    emitted: float = 0.0  # EngineStats.emitted of its (first) token's step; 0: not from a step


class RequestStream:
    """The tokens of one request, as the engine produces them."""

    def __init__(self, engine: EngineClient, request_id: int) -> None:
        self.engine = engine
        self.request_id = request_id
        self.finished = False  # its last event is delivered
        self.events: asyncio.Queue[TokenEvent] = asyncio.Queue()

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        while True:
            event = await self.events.get()
            # A consumer slower than the engine (HTTP at many streams) takes every token already
            # delivered as one event: one text delta and one SSE chunk instead of one per token, so
            # the API's cost follows its own pace, not the engine's (vLLM's output collector merges
            # the same way). At one event per step nothing changes.
            while event.finish_reason is None and event.error is None and not self.events.empty():
                later = self.events.get_nowait()
                if later.error is not None:  # the tokens before it first
                    self.events.put_nowait(later)  # empty before this put: it is next again
                    break
                # the merged event's delivery is timed from its oldest token's hand-over
                tokens = event.token_ids + later.token_ids
                event = TokenEvent(tokens, later.finish_reason, emitted=event.emitted)
            if event.error is not None:
                raise event.error
            yield event
            if event.finish_reason is not None:
                return

    def abort(self) -> None:
        self.engine.abort(self)


StepHook = Callable[[EngineStats], None]  # on the event loop, after each step's events
FailureHook = Callable[[str], None]  # on the thread that found the engine gone


class EngineClient:
    """The asyncio side, whichever way the engine loop runs. Subclasses set the engine's sizes and
    implement `_launch`, `_send` and `_shutdown`; everything here runs on the event loop."""

    max_model_len: int
    num_blocks: int
    block_size: int
    max_num_seqs: int
    api_servers = 1  # API processes sharing the engine (EngineProcess): each takes its share of the queue

    def __init__(
        self, *, max_queue: int, on_step: StepHook | None = None, on_failure: FailureHook | None = None
    ) -> None:
        self.max_queue = max_queue
        self.on_step = on_step
        self.on_failure = on_failure
        self.stats = EngineStats()
        self._streams: dict[int, RequestStream] = {}
        self._ids = itertools.count()
        self._num_submitted = 0
        self._failure: str | None = None  # set once the engine is gone for good
        self._loop: asyncio.AbstractEventLoop | None = None
        self._switch_interval: float | None = None  # the process's own, restored on stop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL_S))
        self._launch()

    def stop(self) -> None:
        self._shutdown()
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None

    # -- what the metrics and the queue limit read ---------------------------------------------------

    @property
    def num_waiting(self) -> int:
        # Requests still on their way to the engine count as waiting.
        return self.stats.waiting + self._num_submitted - self.stats.num_added

    @property
    def num_running(self) -> int:
        return self.stats.running

    @property
    def kv_cache_usage(self) -> float:
        return self.stats.kv_cache_usage

    @property
    def num_preemptions(self) -> int:
        return self.stats.num_preemptions

    # -- requests ----------------------------------------------------------------------------------

    def add_request(
        self, prompt_token_ids: list[int], params: SamplingParams, eos_token_ids: frozenset[int]
    ) -> RequestStream:
        """Queue a request; raises RequestRejected (never servable) or QueueFull (retry later)."""
        check_prompt(len(prompt_token_ids), self.max_model_len, self.num_blocks, self.block_size)
        # Requests on their way may be about to take free running slots: only the excess waits. With
        # several API processes the engine's queue is shared and each sees only its own requests in
        # transit: it counts the others' as many as its own, so together they stop near max_queue.
        in_transit = self._num_submitted - self.stats.num_added
        free_slots = max(self.max_num_seqs - self.num_running, 0)
        if self.stats.waiting + self.api_servers * in_transit - free_slots >= self.max_queue:
            raise QueueFull(f"{self.num_waiting} requests are already waiting")
        stream = RequestStream(self, next(self._ids))
        if self._failure is not None:
            self._finish(stream, TokenEvent([], error=EngineError(self._failure)))
            return stream
        self._streams[stream.request_id] = stream
        self._num_submitted += 1
        self._send(("add", stream.request_id, list(prompt_token_ids), params, eos_token_ids))
        return stream

    def abort(self, stream: RequestStream) -> None:
        """Stop generating for `stream` and free its KV blocks before the next step."""
        if not stream.finished:
            self._send(("abort", stream.request_id))

    # -- delivery (on the event loop) ----------------------------------------------------------------

    def _deliver(self, events: list[Event], stats: EngineStats) -> None:
        self.stats = stats
        streams, emitted = self._streams, stats.emitted
        for request_id, token_id, reason, error in events:
            stream = streams.get(request_id)
            if stream is None:
                continue
            if error is not None:
                event = TokenEvent([], error=EngineError(error))
            else:
                tokens = [] if token_id is None else [token_id]
                event = TokenEvent(tokens, None if reason is None else FinishReason(reason), emitted=emitted)
                if reason is None:
                    stream.events.put_nowait(event)
                    continue
            del streams[request_id]
            self._finish(stream, event)
        if self.on_step is not None and stats.batch_size:
            self.on_step(stats)

    def fail(self, message: str) -> None:
        """The engine is gone for good (its process, or a tensor-parallel rank, died): every stream in
        flight ends with `message`, and so does every later request; then `on_failure` runs (the
        server exits). Callable from any thread; the one failure path of both ways to run the loop."""
        log.error("%s", message)
        if self._loop is None:  # not serving yet: no stream to end
            self._failure = message
        else:
            self._loop.call_soon_threadsafe(self._fail_all, message)
        if self.on_failure is not None:
            self.on_failure(message)

    def _fail_all(self, message: str) -> None:
        """The engine is gone: every stream in flight ends with `message`, and so does every later one."""
        self._failure = message
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            self._finish(stream, TokenEvent([], error=EngineError(message)))

    @staticmethod
    def _finish(stream: RequestStream, event: TokenEvent) -> None:
        stream.finished = True
        stream.events.put_nowait(event)

    # -- the engine loop's side, per subclass -------------------------------------------------------

    def _launch(self) -> None:
        raise NotImplementedError

    def _send(self, command: Command) -> None:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError


class AsyncEngine(EngineClient):
    """The engine loop on a thread of this process (the `engine_process=false` setting)."""

    def __init__(
        self,
        engine: LLMEngine,
        *,
        max_queue: int,
        on_step: StepHook | None = None,
        on_failure: FailureHook | None = None,
    ) -> None:
        super().__init__(max_queue=max_queue, on_step=on_step, on_failure=on_failure)
        self.engine = engine
        self.max_model_len = engine.max_model_len
        self.num_blocks = engine.block_manager.num_blocks
        self.block_size = engine.block_manager.block_size
        self.max_num_seqs = engine.scheduler.max_num_seqs
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def _launch(self) -> None:
        self._thread = threading.Thread(target=self._run, name="r1serve-engine", daemon=True)
        self._thread.start()
        # An exit that skips `stop` (a forced second Ctrl-C) would finalise the interpreter under a step
        # still running torch on this daemon thread, which aborts the process (SIGABRT, "terminate
        # called without an active exception"): end the loop first. It stops between steps.
        atexit.register(self._shutdown)

    def _shutdown(self) -> None:
        atexit.unregister(self._shutdown)
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _send(self, command: Command) -> None:
        self._inbox.put(command)
        self._wakeup.set()

    # -- engine thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None

        def emit(events: list[Event], stats: EngineStats) -> None:
            if not loop.is_closed():  # a forced exit closed it under this step; the loop stops next
                loop.call_soon_threadsafe(self._deliver, events, stats)

        try:
            EngineCore(self.engine).run(self._receive, emit)
        except BaseException as exc:
            # EngineCore survives an Exception in a step; anything that still ends the thread (its own
            # recovery failing, a BaseException) would leave every request waiting on a loop that is
            # gone while /ready says 200: fail them all, and the server with them.
            if not self._stopping:
                self.fail(f"the engine thread died: {type(exc).__name__}: {exc}")
            raise

    def _receive(self, block: bool) -> list[Command] | None:
        if block:
            self._wakeup.wait(timeout=1.0)
        self._wakeup.clear()
        if self._stopping:
            return None
        commands = []
        while True:
            try:
                commands.append(self._inbox.get_nowait())
            except queue.Empty:
                return commands
