"""The model runner and the engine built from the server's settings, in whichever process runs them.

A failure raises `EngineStartError` with the one-line message the server exits with, so the engine
thread and the engine process report a bad checkpoint or setting in the same words.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from r1serve.config import Settings

if TYPE_CHECKING:
    from r1serve.engine.llm_engine import LLMEngine
    from r1serve.model_runner import ModelRunner

log = logging.getLogger(__name__)


class EngineStartError(RuntimeError):
    """The model or the engine could not be built; the message is the server's exit message."""


def build_engine(settings: Settings) -> tuple[ModelRunner, LLMEngine]:
    """Loads the checkpoint, warms the runner up and wraps it in an LLMEngine."""
    from r1serve.checkpoint import CheckpointError

    s = settings
    try:
        # here, not at the top: the API processes import this module for EngineStartError, and need
        # neither the engine nor torch; inside the try, so that a broken install says why
        from r1serve.engine.llm_engine import LLMEngine
        from r1serve.engine.sampler import Sampler
        from r1serve.model_runner import ModelRunner

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
        try:
            runner.warmup()
            # Every sampling path, at the batch sizes a step can give it: on a GPU 1 and the most (a
            # kernel may be picked by size). Once at 1 row on the CPU, which loads no kernels lazily
            # but keeps the path exercised, where 256 rows of a real vocabulary take seconds to sort.
            sizes = sorted({1, s.max_num_seqs}) if runner.device.type == "cuda" else [1]
            Sampler().warmup(runner.config.vocab_size, runner.device, sizes)
        except BaseException:
            runner.close()  # else its tensor-parallel workers outlive the failure
            raise
    except (CheckpointError, ValueError, OSError) as exc:
        raise EngineStartError(str(exc)) from exc
    except Exception as exc:
        log.exception("loading %s failed", s.model)
        raise EngineStartError(f"loading {s.model} failed: {type(exc).__name__}: {exc}") from exc
    engine = LLMEngine(
        runner,
        max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=max(s.max_num_batched_tokens, s.max_num_seqs),
        max_prefill_tokens_when_decoding=s.max_prefill_tokens_when_decoding,
        async_scheduling=s.async_scheduling,
    )
    log.info(
        "loaded %s on %s (%s) in %.1fs: %d KV blocks of %d tokens (%.0f MiB), max_model_len %d",
        s.model_name, runner.device, runner.dtype, time.monotonic() - started, runner.num_blocks,
        runner.block_size, runner.kv_cache_bytes / 2**20, runner.max_model_len,
    )  # fmt: skip
    return runner, engine
