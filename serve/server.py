"""`run_server(settings)`: uvicorn around the gateway, with SIGTERM draining and the connection limits
uvicorn lacks. Import-safe: nothing starts at import, so vLLM's spawned engine process can import it."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serve.app import create_app
from serve.gateway import Gateway
from serve.logs import configure_logging, log
from serve.settings import ServeSettings

# After the drain, uvicorn waits this long for replies still being written, then cancels them.
GRACE_AFTER_DRAIN_S = 2


class DrainingServer(uvicorn.Server):
    """The first SIGTERM/SIGINT starts a drain and keeps listening: /readyz and new requests answer 503
    (load balancers see it; clients get a Retry-After, not a refused connection) while admitted requests
    finish, up to drain_timeout_s. Then uvicorn stops and lifespan stops the engine. A second signal
    stops at once (RELIABILITY F2)."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        # The drain is ours; after it, uvicorn only waits briefly for replies still being written.
        config.timeout_graceful_shutdown = GRACE_AFTER_DRAIN_S
        super().__init__(config)
        self.gateway = gateway

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = self.gateway.drain_deadline is None
        self.gateway.begin_drain(reason=signal.Signals(sig).name)
        if not first or not self.started:  # a second signal, or one during startup: stop now
            super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        return self.gateway.drained() or await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.force_exit and self.gateway.process is not None:
            # uvicorn skips lifespan shutdown on a forced exit: never leave an engine behind.
            await asyncio.to_thread(self.gateway.process.stop, 2.0)


class CloseWhileDraining:
    """ASGI wrapper: while draining, every response carries `Connection: close`, so no client sends its
    next request down a keep-alive connection that uvicorn is about to shut (a reset, not a 503)."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app, self.gateway = app, gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.gateway.admission.draining:
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, send_closing)


class LingeringTransport:
    """A transport that closes like a polite server: the reply is flushed, our side shut (FIN), and
    what the client still sends is read and dropped for up to `linger_s`. Closing with unread input
    sends a TCP reset instead, and a client still uploading (a 50 MB body answered 413) would see
    "connection reset" rather than the error it was sent. A connection with nothing left unread (an
    idle keep-alive one, a finished request) closes at once."""

    def __init__(
        self,
        inner: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        linger_s: float,
        unread: Callable[[], bool],
    ) -> None:
        self.inner, self.loop, self.linger_s, self.unread = inner, loop, linger_s, unread
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def is_closing(self) -> bool:
        return self.lingering or self.inner.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if not self.unread() or not self.inner.can_write_eof():
            self.inner.close()
            return
        self.lingering = True
        self.inner.write_eof()
        self.inner.resume_reading()  # flow control may have paused it; drain, do not leave it unread
        self.loop.call_later(self.linger_s, self.inner.close)


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head limits it lacks (RELIABILITY E3): request line +
    headers over `max_bytes` or more than `max_lines` header lines -> 431 and the connection closes
    (counted as the bytes arrive, so a 1 MB header is never buffered whole); a connection that has not
    sent a complete head within `timeout_s` (idle or dripping, slowloris) is closed. The body's own
    deadline is `limits.BodyLimit`'s."""

    max_bytes, max_lines, timeout_s = 65_536, 100, 10.0  # replaced per server by `protocol_for`
    linger_s = 2.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        self.lingering = LingeringTransport(transport, loop, self.linger_s, self._unread)
        super().connection_made(self.lingering)  # type: ignore[arg-type]
        self.head_bytes, self.head_lines, self.refused = 0, 0, False
        self.in_head = True
        self.head_timer: asyncio.TimerHandle | None = self.loop.call_later(self.timeout_s, self._too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused or self.lingering.lingering:  # the answer is sent: read and drop the rest
            return
        super().data_received(data)
        if self.in_head:  # the head is still incomplete, so all of `data` was head
            self.head_bytes += len(data)
        if self.refused or self.head_bytes > self.max_bytes or self.head_lines > self.max_lines:
            self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head, self.head_bytes, self.head_lines = True, 0, 0
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.timeout_s, self._too_slow)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_lines += 1
        if self.head_lines <= self.max_lines:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head, self.head_bytes = False, 0
        self._stop_head_timer()
        if self.head_lines > self.max_lines:
            self.refused = True  # never dispatched to the app
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self.refused:
            super().on_message_complete()

    def eof_received(self) -> None:
        if self.lingering.lingering:
            self.lingering.inner.close()  # the client is done sending: no need to linger further
        super().eof_received()

    def _unread(self) -> bool:
        """Part of a request (its head, or its body) may still be on its way from the client."""
        body_pending = self.cycle is not None and self.cycle.more_body and not self.in_head
        return bool(self.head_bytes) or self.refused or body_pending

    def _refuse(self) -> None:
        self.refused = True
        self._stop_head_timer()
        if self.transport.is_closing():
            return
        message = f"request head over {self.max_bytes} bytes or {self.max_lines} header lines"
        body = json.dumps({"error": {"code": "headers_too_large", "message": message, "details": []}})
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body.encode())
        )
        self.transport.close()

    def _too_slow(self) -> None:
        self.head_timer = None
        if self.in_head and not self.transport.is_closing():
            self.lingering.inner.close()  # a slow client gets no grace period

    def _stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None


def protocol_for(settings: ServeSettings) -> type[LimitedHttpProtocol]:
    limits = {
        "max_bytes": settings.max_header_bytes,
        "max_lines": settings.max_headers,
        "timeout_s": settings.header_timeout_s,
    }
    return type("GatewayHttpProtocol", (LimitedHttpProtocol,), limits)


def server_config(app: FastAPI, settings: ServeSettings) -> uvicorn.Config:
    """How `forma serve` runs uvicorn; tests start their servers from this same config."""
    return uvicorn.Config(
        CloseWhileDraining(app, app.state.gateway),
        host=settings.host,
        port=settings.port,
        http=protocol_for(settings),
        log_config=None,
        access_log=False,  # RequestContext writes the access line, as JSON with the request id
        timeout_keep_alive=5,  # an idle keep-alive connection is closed after 5 s
        timeout_graceful_shutdown=settings.drain_timeout_s,
        lifespan="on",
    )


def run_server(settings: ServeSettings) -> None:
    app = create_app(settings)  # refuses bad keys, access or log policy before anything is configured
    configure_logging(getattr(logging, settings.log_level.upper()))
    if settings.log_text:
        log("log_text_on", warning="request texts are written to the logs (--log-text)")
    server = DrainingServer(server_config(app, settings), app.state.gateway)
    server.run()
    if not server.started:  # lifespan startup failed (engine never ready); uvicorn logged why
        raise SystemExit(3)
