"""The engine loop: commands in, one batch of per-request events and stats out per step.

The same loop runs on the engine thread (`AsyncEngine`) and in the engine process
(`engine_process`); only the channel differs, so both are given as two callables. Everything that
crosses it is a plain tuple of ints and strings, cheap to pickle.

An exception inside a step fails only the requests that were running (an error event each); the
loop and the server keep going.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NamedTuple

from r1serve.engine.sequence import SamplingParams, Sequence

if TYPE_CHECKING:  # the API processes import this module, and need neither the engine nor torch
    from r1serve.engine.llm_engine import LLMEngine

log = logging.getLogger(__name__)

AddCommand = tuple[Literal["add"], int, list[int], SamplingParams, frozenset[int]]  # request id, prompt, ...
AbortCommand = tuple[Literal["abort"], int]  # request id
StopCommand = tuple[Literal["stop"]]  # the engine process exits (the thread stops by a flag)
Command = AddCommand | AbortCommand | StopCommand
# (request_id, new token id or None, finish reason value or None, error message or None)
Event = tuple[int, int | None, str | None, str | None]


class EngineStats(NamedTuple):
    """The engine's state after a step, for the metrics and the queue limit."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    num_preemptions: int = 0
    batch_size: int = 0  # sequences computed in the step (0: no step, only commands applied)
    batch_tokens: int = 0
    # Seconds from the previous step's start to this one's while the engine stepped back to back (0
    # after idle): the pace at which every running stream gets a token, as the engine sets it.
    step_interval: float = 0.0
    num_added: int = 0  # add commands applied so far: the ones sent after these are still in transit
    # time.monotonic() when the events were handed over: CLOCK_MONOTONIC, one clock for every process
    # of the host, so the API process can time its own share of the ITL (delivery) from here.
    emitted: float = 0.0


# block: the engine is idle, wait for a command. Returns the commands that came, or None: stop.
Receive = Callable[[bool], list[Command] | None]
Emit = Callable[[list[Event], EngineStats], None]


class EngineCore:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._seqs: dict[int, Sequence] = {}  # request id -> its sequence
        self._requests: dict[int, int] = {}  # sequence id -> request id
        self._num_added = 0

    def run(self, receive: Receive, emit: Emit) -> None:
        """Applies commands and steps until `receive` says stop; emits once per step (or per batch of
        commands while idle, so an abort's freed KV shows in the stats)."""
        engine = self.engine
        last_start: float | None = None  # of the previous step, if the engine has not idled since
        while (commands := receive(idle := not engine.has_work())) is not None:
            events: list[Event] = []
            interval = 0.0
            stepped = False
            if idle:
                last_start = None
            try:
                for command in commands:
                    events += self._apply(command)
                if engine.has_work():
                    stepped = True
                    started = time.perf_counter()
                    if last_start is not None:
                        interval = started - last_start
                    last_start = started
                    events += self._step()
            except Exception:  # a bookkeeping bug must not kill the loop every request depends on
                log.exception("engine loop error")
                events += self._fail_running("internal engine error")
            if commands or stepped:
                emit(events, self.stats(interval, stepped))

    def stats(self, step_interval: float = 0.0, stepped: bool = False) -> EngineStats:
        engine = self.engine
        scheduler = engine.scheduler
        return EngineStats(
            len(scheduler.running), len(scheduler.waiting), engine.block_manager.usage,
            scheduler.num_preemptions, engine.last_batch_size if stepped else 0,
            engine.last_batch_tokens if stepped else 0, step_interval, self._num_added, time.monotonic(),
        )  # fmt: skip

    def _apply(self, command: Command) -> list[Event]:
        if command[0] == "add":
            _, request_id, prompt_token_ids, params, eos_token_ids = command
            return self._add(request_id, prompt_token_ids, params, eos_token_ids)
        seq = self._seqs.pop(command[1], None)
        if seq is None:  # finished (or failed) before the abort came
            return []
        self.engine.abort(seq)
        del self._requests[seq.seq_id]
        return [(command[1], None, "abort", None)]

    def _add(
        self, request_id: int, prompt_token_ids: list[int], params: SamplingParams, eos: frozenset[int]
    ) -> list[Event]:
        self._num_added += 1
        seq = Sequence(prompt_token_ids, params, frozenset(eos))
        try:
            self.engine.add(seq)
        except Exception as exc:  # checked on the asyncio side already; belt and braces
            return [(request_id, None, None, str(exc))]
        self._seqs[request_id] = seq
        self._requests[seq.seq_id] = request_id
        return []

    def _step(self) -> list[Event]:
        try:
            results = self.engine.step()
        except Exception as exc:
            log.exception("engine step failed; failing the running requests")
            return self._fail_running(f"the engine failed while computing this request: {type(exc).__name__}")
        events: list[Event] = []
        for result in results:
            seq = result.seq
            request_id = self._requests.get(seq.seq_id)
            if request_id is None:
                continue
            reason = seq.finish_reason
            events.append((request_id, result.token_id, None if reason is None else reason.value, None))
            if seq.is_finished:
                del self._requests[seq.seq_id], self._seqs[request_id]
        return events

    def _fail_running(self, message: str) -> list[Event]:
        events: list[Event] = []
        for seq in self.engine.fail_running():
            request_id = self._requests.pop(seq.seq_id, None)
            if request_id is not None:
                del self._seqs[request_id]
                events.append((request_id, None, None, message))
        return events
