"""Fixtures shared by every test area: the tiny checkpoint and a live server on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from r1ops.processes import ServerProcess

REPO = Path(__file__).resolve().parents[1]
# The tiny model is latency-bound: torch's intra-op threads only contend on a shared 2-core runner
# (measured 40x slower decode steps under load). Servers started by tests inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Servers started by tests run on the settings the tests name: an R1SERVE_* variable exported in the
# shell (the GPU pods' R1SERVE_API_SERVERS=2 for a benchmark, say) would otherwise reach every one.
for _name in [n for n in os.environ if n.startswith("R1SERVE_")]:
    del os.environ[_name]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from r1serve.tiny_model import write_tiny_model

    out = tmp_path_factory.mktemp("tiny-model")
    write_tiny_model(out)
    return out


@pytest.fixture
def start_server(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: start_server(**settings) -> a ready ServerProcess, stopped after the test."""
    started: list[ServerProcess] = []

    def start(model_dir: Path | None = None, **settings: object) -> ServerProcess:
        log = tmp_path / f"server-{len(started)}.log"
        server = ServerProcess(model_dir or tiny_model_dir, settings=settings, log_path=log)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module on the tiny model, default settings."""
    from r1serve.tiny_model import write_tiny_model

    model_dir = tmp_path_factory.mktemp("live-model")
    write_tiny_model(model_dir)
    log = tmp_path_factory.mktemp("live-log") / "server.log"
    with ServerProcess(model_dir, log_path=log) as server:
        yield server
