"""Probes and operations: /health (liveness), /ready (readiness), /metrics, /version."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from r1serve.api.drain import RETRY_AFTER_SECONDS
from r1serve.api.state import ServerState

router = APIRouter()


def package_version() -> str:
    try:
        return version("r1-gitops")
    except PackageNotFoundError:
        return "0+unknown"


def _state(request: Request) -> ServerState:
    return request.app.state.server


@router.get("/health")
async def health() -> dict:
    """Liveness: the process and its event loop answer (also while the model loads)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 only with the weights loaded and warmed up, and not draining."""
    state = _state(request)
    if state.is_ready:
        return JSONResponse({"status": "ready"})
    status = "draining" if state.drain.draining else "loading"
    return JSONResponse({"status": status}, 503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/version")
async def server_version(request: Request) -> dict:
    state = _state(request)
    runner = state.runner
    return {
        "version": package_version(),
        "model": state.model_name,
        "revision": state.settings.model_revision,
        "device": str(runner.device) if runner else state.settings.device,
        "dtype": str(runner.dtype).removeprefix("torch.") if runner else state.settings.dtype,
        "max_model_len": runner.max_model_len if runner else None,
    }
