"""Graceful drain: on SIGTERM, /ready turns 503 at once, new requests get 503, in-flight requests
(streams included) run to completion for up to `drain_timeout` seconds, then the process exits 0.

Uvicorn's own SIGTERM handling stops accepting work and cancels what is left after its graceful
timeout, then re-raises the signal (so the exit status is not 0). `DrainingServer` takes the signal
over: it starts the drain, and asks uvicorn to exit only once the in-flight count is zero.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from r1serve.api.errors import APIError, error_response

log = logging.getLogger(__name__)

# Probes and scrapes keep answering while draining (they are not counted as in-flight work).
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics", "/version"})
RETRY_AFTER_SECONDS = 5


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


class DrainMiddleware:
    """Counts in-flight requests; answers 503 to new work once draining."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            error = APIError(
                503, "the server is shutting down", code="draining", retry_after=RETRY_AFTER_SECONDS
            )
            await error_response(error)(scope, receive, send)
            return
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.leave()


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose SIGTERM/SIGINT drains first; a second SIGINT forces the exit."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_timeout: float) -> None:
        super().__init__(config)
        self.drain, self.drain_timeout = drain, drain_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def startup(self, sockets: list | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Deliberately not recorded in _captured_signals: uvicorn would re-raise it after shutdown.
        if self.drain.draining or self._loop is None:
            if sig == signal.SIGINT or self._loop is None:
                self.should_exit = self.force_exit = True
            return
        self.drain.draining = True  # /ready is 503 from this instant
        log.info(
            "signal %s: draining %d in-flight requests (up to %.0fs)",
            sig,
            self.drain.in_flight,
            self.drain_timeout,
        )
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        if not await self.drain.wait_idle(self.drain_timeout):
            log.warning("drain timeout: %d requests still in flight are cut off", self.drain.in_flight)
        else:
            log.info("drained; shutting down")
        self.should_exit = True
