"""Bearer API key for the /v1 routes (probes and /metrics stay open for kubelet and Prometheus)."""

from __future__ import annotations

import secrets

from fastapi import Request

from r1serve.api.errors import APIError


# async although it never awaits: FastAPI runs a plain `def` dependency on a worker thread, a hop per request.
async def require_api_key(request: Request) -> None:
    key = request.app.state.server.settings.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        token.strip().encode(), key.get_secret_value().encode()
    ):
        raise APIError(
            401, "Incorrect or missing API key (send Authorization: Bearer <key>).", code="invalid_api_key"
        )
