"""The engine loop in its own thread, and the asyncio side that requests talk to.

All model work happens on the engine thread, off the event loop. Requests and aborts reach it
through an inbox and are applied between steps; each step's new tokens go back to the request
coroutines in one `call_soon_threadsafe` call. An exception inside a step fails only the requests
that were running (with an EngineError); the loop and the server keep going.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from r1serve.engine.llm_engine import LLMEngine, StepResult
from r1serve.engine.sequence import FinishReason, SamplingParams, Sequence

log = logging.getLogger(__name__)

# The engine thread drops the GIL in every torch call and in the wait for each step's tokens, and
# must take it back from the event loop, which holds it while it streams tokens to the clients. A
# thread that wants the GIL gets it only when the holder blocks or after the switch interval,
# Python's default 5 ms: at 64 streams that can come back several times in one step and be the
# inter-token latency tail. 0.5 ms bounds each wait at a tenth of that, for a few microseconds of
# hand-over cost a switch. Process-wide, so it is set while an engine runs (the server process).
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


class RequestStream:
    """The tokens of one request, as the engine produces them."""

    def __init__(self, engine: AsyncEngine, seq: Sequence) -> None:
        self.engine = engine
        self.seq = seq
        self.events: asyncio.Queue[TokenEvent] = asyncio.Queue()

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        while True:
            event = await self.events.get()
            if event.error is not None:
                raise event.error
            yield event
            if event.finish_reason is not None:
                return

    def abort(self) -> None:
        self.engine.abort(self)


StepHook = Callable[[LLMEngine, list[StepResult]], None]


class AsyncEngine:
    def __init__(self, engine: LLMEngine, *, max_queue: int, on_step: StepHook | None = None) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.on_step = on_step
        self._inbox: queue.SimpleQueue[tuple[str, RequestStream]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._stopping = False
        self._streams: dict[int, RequestStream] = {}  # engine thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._switch_interval: float | None = None  # the process's own, restored on stop

    # -- asyncio side ------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._run, name="r1serve-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None

    @property
    def num_waiting(self) -> int:
        # Read from other threads without a lock: a momentarily stale count is fine for metrics and 429s.
        return len(self.engine.scheduler.waiting) + self._inbox.qsize()

    @property
    def num_running(self) -> int:
        return len(self.engine.scheduler.running)

    @property
    def kv_cache_usage(self) -> float:
        return self.engine.block_manager.usage

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams, eos_token_ids: frozenset[int]):
        """Queue a request; raises RequestRejected (never servable) or QueueFull (retry later)."""
        self.engine.check(len(prompt_token_ids))
        # Requests still in the inbox may be about to take free running slots: only the excess waits.
        free_slots = self.engine.scheduler.max_num_seqs - self.num_running
        if self.num_waiting - max(free_slots, 0) >= self.max_queue:
            raise QueueFull(f"{self.num_waiting} requests are already waiting")
        stream = RequestStream(self, Sequence(prompt_token_ids, params, eos_token_ids))
        self._inbox.put(("add", stream))
        self._wakeup.set()
        return stream

    def abort(self, stream: RequestStream) -> None:
        """Stop generating for `stream` and free its KV blocks before the next step."""
        if not stream.seq.is_finished:
            self._inbox.put(("abort", stream))
            self._wakeup.set()

    def _dispatch(self, events: list[tuple[RequestStream, TokenEvent]]) -> None:
        for stream, event in events:
            stream.events.put_nowait(event)

    # -- engine thread -----------------------------------------------------------------------------

    def _apply_inbox(self) -> list[tuple[RequestStream, TokenEvent]]:
        events = []
        while True:
            try:
                kind, stream = self._inbox.get_nowait()
            except queue.Empty:
                return events
            seq = stream.seq
            if kind == "add":
                try:
                    self.engine.add(seq)
                except Exception as exc:  # checked on the asyncio side already; belt and braces
                    events.append((stream, TokenEvent([], error=exc)))
                else:
                    self._streams[seq.seq_id] = stream
            elif seq.seq_id in self._streams:
                self.engine.abort(seq)
                del self._streams[seq.seq_id]
                events.append((stream, TokenEvent([], FinishReason.ABORT)))

    def _run(self) -> None:
        assert self._loop is not None
        while not self._stopping:
            self._wakeup.clear()
            try:
                events = self._apply_inbox()
                if self.engine.has_work():
                    events += self._step()
            except Exception:  # a bookkeeping bug must not kill the loop every request depends on
                log.exception("engine loop error")
                events = self._fail_running(EngineError("internal engine error"))
            if events:
                self._loop.call_soon_threadsafe(self._dispatch, events)
            elif not self.engine.has_work():
                self._wakeup.wait(timeout=1.0)

    def _step(self) -> list[tuple[RequestStream, TokenEvent]]:
        try:
            results = self.engine.step()
        except Exception as exc:
            log.exception("engine step failed; failing the running requests")
            return self._fail_running(
                EngineError(f"the engine failed while computing this request: {type(exc).__name__}")
            )
        events = []
        for result in results:
            seq = result.seq
            stream = self._streams.get(seq.seq_id)
            if stream is None:
                continue
            tokens = [] if result.token_id is None else [result.token_id]
            events.append((stream, TokenEvent(tokens, seq.finish_reason)))
            if seq.is_finished:
                del self._streams[seq.seq_id]
        if self.on_step is not None:
            try:
                self.on_step(self.engine, results)
            except Exception:
                log.exception("step hook failed")
        return events

    def _fail_running(self, error: EngineError) -> list[tuple[RequestStream, TokenEvent]]:
        failed = [self._streams.pop(s.seq_id, None) for s in self.engine.fail_running()]
        return [(stream, TokenEvent([], error=error)) for stream in failed if stream is not None]
