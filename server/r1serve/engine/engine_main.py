"""The engine process's main: builds the engine, reports ready (or why not) to the API processes,
then runs `EngineCore` over their pipes. Imported only in that process (`engine_child`): torch and
the model load here, not in the API processes (`engine_process`, their side, imports neither).
"""

from __future__ import annotations

import logging
import signal
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

from r1serve.config import Settings
from r1serve.engine.api_pipes import ApiPipes
from r1serve.engine.core import EngineCore
from r1serve.engine.engine_child import start_lifeline
from r1serve.engine.engine_process import EngineSizes
from r1serve.engine.loader import EngineStartError, build_engine


def engine_main(
    settings: Settings, conns: list[Connection], log_level: int, ready: Event | None = None
) -> None:
    """Entry point of the engine process: one pipe per API process (`ApiPipes`); `ready` is set once
    the model is loaded."""
    # The API process decides when the engine stops (after draining); a Ctrl-C reaches the whole
    # process group, and must not kill a step under the requests still streaming.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s engine %(name)s: %(message)s")
    start_lifeline()
    pipes = ApiPipes(conns)
    try:
        runner, engine = build_engine(settings)
    except EngineStartError as exc:
        pipes.send_all(("error", str(exc)))
        raise SystemExit(1) from None
    runner.on_failure(lambda message: pipes.send_all(("fatal", message)))
    pipes.send_all(("ready", EngineSizes(
        str(runner.device), str(runner.dtype), runner.max_model_len, runner.block_size,
        runner.num_blocks, engine.scheduler.max_num_seqs,
    )))  # fmt: skip
    if ready is not None:
        ready.set()
    try:
        EngineCore(engine).run(pipes.receive, pipes.emit)
    finally:
        runner.close()  # tensor parallel: ends the other ranks' processes
