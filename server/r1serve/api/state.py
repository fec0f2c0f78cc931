"""What the routes share: settings, the loaded model and engine, readiness, metrics and drain.

The checkpoint loads in a background thread so /health answers (and /ready says 503) while a large
model loads; a checkpoint that cannot load stops the server with a one-line error and exit 1.
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
from r1serve.engine.async_engine import AsyncEngine
from r1serve.engine.llm_engine import LLMEngine, StepResult

log = logging.getLogger(__name__)


class ServerState:
    def __init__(self, settings: Settings, on_fatal: Callable[[str], None]) -> None:
        self.settings = settings
        self.model_name = settings.model_name
        self.on_fatal = on_fatal
        self.drain = Drain()
        self.metrics = Metrics(self.model_name, self._engine_state)
        self.runner = None  # r1serve.model_runner.ModelRunner once loaded
        self.engine: AsyncEngine | None = None
        self.ready = False
        self.created = int(time.time())

    def _engine_state(self) -> EngineState | None:
        engine = self.engine
        if engine is None:
            return None
        preemptions = engine.engine.scheduler.num_preemptions
        return engine.num_running, engine.num_waiting, engine.kv_cache_usage, preemptions

    # -- lifecycle ---------------------------------------------------------------------------------

    def start_loading(self, loop: asyncio.AbstractEventLoop) -> None:
        # A daemon thread, not an executor: a SIGTERM during a long load must not wait for it.
        threading.Thread(target=self._load, args=(loop,), name="r1serve-load", daemon=True).start()

    def _load(self, loop: asyncio.AbstractEventLoop) -> None:
        from r1serve.checkpoint import CheckpointError
        from r1serve.model_runner import ModelRunner

        s = self.settings
        try:
            started = time.monotonic()
            runner = ModelRunner(
                s.model,
                device=s.device,
                dtype=s.dtype,
                kv_cache_memory=int(s.kv_cache_memory),
                gpu_memory_utilization=s.gpu_memory_utilization,
                block_size=s.block_size,
                max_model_len=s.max_model_len,
                progress=True,
                enforce_eager=s.enforce_eager,
                max_num_seqs=s.max_num_seqs,
                tensor_parallel_size=s.tensor_parallel_size,
            )
            # a dead tensor-parallel worker leaves the model unusable: exit, and let the pod restart
            runner.on_failure(lambda message: loop.call_soon_threadsafe(self.on_fatal, message))
            runner.warmup()
        except (CheckpointError, ValueError, OSError) as exc:
            loop.call_soon_threadsafe(self.on_fatal, str(exc))
            return
        except Exception as exc:
            log.exception("loading %s failed", s.model)
            loop.call_soon_threadsafe(self.on_fatal, f"loading {s.model} failed: {type(exc).__name__}: {exc}")
            return
        engine = LLMEngine(
            runner,
            max_num_seqs=s.max_num_seqs,
            max_num_batched_tokens=max(s.max_num_batched_tokens, s.max_num_seqs),
            max_prefill_tokens_when_decoding=s.max_prefill_tokens_when_decoding,
        )
        log.info(
            "loaded %s on %s (%s) in %.1fs: %d KV blocks of %d tokens (%.0f MiB), max_model_len %d",
            self.model_name, runner.device, runner.dtype, time.monotonic() - started, runner.num_blocks,
            runner.block_size, runner.kv_cache_bytes / 2**20, runner.max_model_len,
        )  # fmt: skip
        loop.call_soon_threadsafe(self._go_live, runner, engine, loop)

    def _go_live(self, runner, engine: LLMEngine, loop: asyncio.AbstractEventLoop) -> None:
        self.runner = runner
        self.engine = AsyncEngine(engine, max_queue=self.settings.max_queue, on_step=self._on_step)
        self.engine.start(loop)
        self.ready = True
        log.info("ready: serving %s", self.model_name)

    def _on_step(self, engine: LLMEngine, results: list[StepResult]) -> None:
        if engine.last_batch_size:
            self.metrics.batch_size.labels(self.model_name).observe(engine.last_batch_size)

    def shutdown(self) -> None:
        self.ready = False
        if self.engine is not None:
            self.engine.stop()
        if self.runner is not None:
            self.runner.close()  # tensor parallel: ends the other ranks' processes

    # -- request guards ----------------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        return self.ready and not self.drain.draining

    def require_ready(self) -> AsyncEngine:
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
