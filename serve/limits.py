"""Protection before any work: body size (413, before JSON parsing) and body arrival time (408), both
as ASGI middleware; admission (429 / 503) with a bounded queue in front of the engine's slots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import ApiError, send_error

DISCONNECT: Message = {"type": "http.disconnect"}


class BodyLimit:
    """ASGI middleware: refuse a body over `max_bytes` from its Content-Length, or as it streams in
    (chunked), and a body still incomplete `timeout_s` after the headers (a slow drip: uvicorn has no
    body read timeout of its own). The error is sent at once with `Connection: close`, the app sees a
    disconnect and its own reply is dropped."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        seen, refused, complete = 0, False, False

        async def counted() -> Message:
            nonlocal seen, refused, complete
            if refused:
                return DISCONNECT
            if complete:  # the body is in: what is left to wait for is the client going away
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                refused = True
                why = f"the request body did not arrive within {self.timeout_s:g} s"
                await send_error(send, 408, "body_timeout", why, scope)
                return DISCONNECT
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                refused = True
                await self._too_large(scope, send)
                return DISCONNECT
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded_send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        why = f"request body over {self.max_bytes} bytes; send less or raise --max-body-bytes"
        await send_error(send, 413, "too_large", why, scope)


class Admission:
    """At most `limit` requests at the engine and `queue` more waiting (FIFO) for a slot there.
    Past both -> 429 with Retry-After; draining or no engine -> 503. A queued request waits at most
    until its own deadline -> 504."""

    def __init__(self, limit: int, queue: int = 0) -> None:
        self.limit, self.queue = limit, queue
        self.running = self.waiting = self.peak = 0
        self.draining = False
        self.engine_ready = False
        self._slots = asyncio.Semaphore(limit)

    @property
    def count(self) -> int:
        """Requests admitted and not finished: running at the engine plus queued for it."""
        return self.running + self.waiting

    @asynccontextmanager
    async def slot(self, wait_s: float) -> AsyncIterator[None]:
        self._refuse_if_unavailable()
        if self.count >= self.limit + self.queue:
            raise ApiError(
                429,
                "overloaded",
                f"{self.limit} requests in flight and {self.queue} queued; retry after 1 s",
                headers={"Retry-After": "1"},
            )
        self.waiting += 1
        self.peak = max(self.peak, self.count)
        try:
            await asyncio.wait_for(self._slots.acquire(), wait_s)
        except TimeoutError:
            why = f"queued for {wait_s:g} s without an engine slot"
            raise ApiError(504, "timeout", why, headers={"Retry-After": "1"}) from None
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()

    def _refuse_if_unavailable(self) -> None:
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
