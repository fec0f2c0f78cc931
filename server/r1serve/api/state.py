"""What the routes share: settings, the loaded model and engine, readiness, metrics and drain.

The checkpoint loads in a background thread (or, with `engine_process`, in the engine process) so
/health answers (and /ready says 503) while a large model loads; a checkpoint that cannot load stops
the server with a one-line error and exit 1, and so does an engine (process or tensor-parallel
worker) that dies while serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from r1serve.api.drain import RETRY_AFTER_SECONDS, Drain
from r1serve.api.errors import APIError
from r1serve.api.metrics import EngineState, Metrics
from r1serve.config import Settings
from r1serve.engine.async_engine import AsyncEngine, EngineClient
from r1serve.engine.core import EngineStats
from r1serve.engine.engine_child import EngineChild
from r1serve.engine.loader import EngineStartError, build_engine

log = logging.getLogger(__name__)


class ServerState:
    def __init__(
        self, settings: Settings, on_fatal: Callable[[str], None], engine_child: EngineChild | None = None
    ) -> None:
        self.settings = settings
        if not settings.engine_process:
            # The engine runs in this process: import it (the model runner and torch with it) here,
            # before the server listens. On the load thread the import would hold the GIL from the
            # event loop's probes for seconds, and a SIGTERM during it would end the interpreter
            # under the import.
            import r1serve.engine.llm_engine  # noqa: F401
        self._engine_child = engine_child  # an engine process `r1serve serve` started early
        self.model_name = settings.model_name
        self.on_fatal = on_fatal
        self.drain = Drain()
        self.metrics = Metrics(self.model_name, self._engine_state, multiprocess=settings.api_servers > 1)
        # once loaded: the ModelRunner, or with an engine process its ModelInfo (tokenizer, sizes)
        self.runner = None
        self.engine: EngineClient | None = None
        self._starting: EngineClient | None = None  # an engine process while its model loads
        self._stopped = False
        self.ready = False
        self.created = int(time.time())

    def _engine_state(self) -> EngineState | None:
        engine = self.engine
        if engine is None:
            return None
        return engine.num_running, engine.num_waiting, engine.kv_cache_usage, engine.num_preemptions

    # -- lifecycle ---------------------------------------------------------------------------------

    def start_loading(self, loop: asyncio.AbstractEventLoop) -> None:
        # A daemon thread, not an executor: a SIGTERM during a long load must not wait for it.
        threading.Thread(target=self._load, args=(loop,), name="r1serve-load", daemon=True).start()

    def _load(self, loop: asyncio.AbstractEventLoop) -> None:
        s = self.settings

        def failed(message: str) -> None:  # the engine's streams have failed already: exit
            loop.call_soon_threadsafe(self._failed, message)

        try:
            if s.engine_process:
                from r1serve.engine.engine_process import EngineProcess

                self._starting = engine = EngineProcess(
                    s, max_queue=s.max_queue, on_step=self._on_step, on_failure=failed
                )
                runner = engine.launch(self._engine_child)  # the model loads in the engine process
            else:
                runner, llm_engine = build_engine(s)
                engine = AsyncEngine(
                    llm_engine, max_queue=s.max_queue, on_step=self._on_step, on_failure=failed
                )
                runner.on_failure(engine.fail)  # a dead tensor-parallel worker
        except Exception as exc:
            if not isinstance(exc, EngineStartError):  # a bug: not a bad checkpoint or setting
                log.exception("starting the engine failed")
                exc = EngineStartError(f"starting the engine failed: {type(exc).__name__}: {exc}")
            if not self._stopped:
                loop.call_soon_threadsafe(self.on_fatal, str(exc))
            return
        loop.call_soon_threadsafe(self._go_live, runner, engine, loop)

    def _go_live(self, runner, engine: EngineClient, loop: asyncio.AbstractEventLoop) -> None:
        self.runner = runner
        self.engine = engine
        if self._stopped:  # SIGTERM while loading
            self.shutdown()
            return
        self.engine.start(loop)
        self.ready = True
        log.info("ready: serving %s", self.model_name)

    def _failed(self, message: str) -> None:
        # The model is unusable: exit, and let the pod restart.
        self.ready = False
        self.on_fatal(message)

    def _on_step(self, stats: EngineStats) -> None:
        self.metrics.batch_size.labels(self.model_name).observe(stats.batch_size)
        if stats.step_interval:  # 0: the first step after idle, which has no previous one
            self.metrics.step_interval.labels(self.model_name).observe(stats.step_interval)

    def shutdown(self) -> None:
        self.ready = False
        self._stopped = True
        engine = self.engine or self._starting
        if engine is not None:
            engine.stop()  # an engine process still loading is killed
        close = getattr(self.runner, "close", None)  # in-process ModelRunner: ends tensor-parallel ranks
        if close is not None:
            close()

    # -- request guards ----------------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        return self.ready and not self.drain.draining

    def require_ready(self) -> EngineClient:
        if self.drain.draining:
            raise APIError(
                503, "the server is shutting down", code="draining", retry_after=RETRY_AFTER_SECONDS
            )
        if not self.ready or self.engine is None:
            raise APIError(503, "the model is still loading", code="loading", retry_after=RETRY_AFTER_SECONDS)
        return self.engine

    def check_model(self, model: str) -> None:
        if model != self.model_name:
            raise APIError(
                404, f"The model `{model}` does not exist; this server serves `{self.model_name}`.",
                param="model", code="model_not_found",
            )  # fmt: skip
