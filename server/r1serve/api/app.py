"""The FastAPI application: routes, error shapes, metrics and drain middleware, model loading."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from r1serve.api import openai_routes, ops_routes
from r1serve.api.body_limit import BodyLimitMiddleware
from r1serve.api.drain import DrainMiddleware
from r1serve.api.errors import install_error_handlers
from r1serve.api.metrics import MetricsMiddleware
from r1serve.api.state import ServerState
from r1serve.config import Settings
from r1serve.engine.engine_child import EngineChild


async def load_task_groups() -> None:
    """Imports anyio's asyncio backend, which every streaming response's task group needs. anyio
    imports it on first use: a dozen modules, ~9 ms on the dev VM and more where their bytecode is
    not cached yet, which would land in the first streamed request's time to first token."""
    async with anyio.create_task_group():
        pass


def create_app(
    settings: Settings, on_fatal: Callable[[str], None], engine_child: EngineChild | None = None
) -> FastAPI:
    state = ServerState(settings, on_fatal, engine_child)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.start_loading(asyncio.get_running_loop())
        await load_task_groups()
        yield
        state.shutdown()

    app = FastAPI(title="r1serve", version=ops_routes.package_version(), lifespan=lifespan)
    app.state.server = state
    install_error_handlers(app)
    app.include_router(ops_routes.router)
    app.include_router(openai_routes.router)
    # Outermost last: metrics see every response, including the drain's 503s and the limit's 413s.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(DrainMiddleware, drain=state.drain)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
