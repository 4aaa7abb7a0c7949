"""Protection before any work: body size (413, before JSON parsing) and admission (429 / 503)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import ApiError


class BodyLimit:
    """ASGI middleware: refuse a body over `max_bytes` from its Content-Length, or as it streams in
    (chunked): then the 413 is sent at once, the app sees a disconnect and its own reply is dropped."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, send)
            return
        seen, refused = 0, False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes and not refused:
                refused = True
                await self._refuse(scope, send)
            return {"type": "http.disconnect"} if refused else message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded_send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        rid = scope.get("state", {}).get("request_id")
        message = f"request body over {self.max_bytes} bytes; send less or raise --max-body-bytes"
        body = {"error": {"code": "too_large", "message": message, "request_id": rid, "details": []}}
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class Admission:
    """Bounded in-flight requests. Over the bound -> 429 with Retry-After; draining or no engine -> 503."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0
        self.draining = False
        self.engine_ready = False

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.draining:
            raise ApiError(
                503,
                "unavailable",
                "the server is shutting down; retry on another instance",
                headers={"Retry-After": "5"},
            )
        if not self.engine_ready:
            raise ApiError(
                503,
                "unavailable",
                "the engine is not ready (starting or restarting); retry shortly",
                headers={"Retry-After": "5"},
            )
        if self.count >= self.limit:
            raise ApiError(
                429,
                "overloaded",
                f"{self.limit} requests already in flight; retry after 1 s",
                headers={"Retry-After": "1"},
            )
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1
