"""A cap on request bodies: 413 in OpenAI's shape before a body too big to be a prompt is read.

FastAPI reads a JSON body whole, parses it, and a chat request's text is then rendered and tokenised:
several times the body's size in memory. Without a cap, one upload of a few hundred MB could take the
pod's memory limit and every stream in flight with it.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from r1serve.api.errors import APIError, error_response


class BodyLimitMiddleware:
    """Refuses a declared Content-Length over `max_bytes` unread; counts a chunked body as it arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _message(self) -> str:
        return f"the request body is larger than the server's limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.max_bytes:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            refusal = error_response(APIError(413, self._message(), code="request_too_large"))
            await refusal(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # raised while FastAPI reads the body, which passes an HTTPException on as it is
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)
