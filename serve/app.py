"""`create_app(settings)`: the FastAPI gateway. `lifespan` starts (or reaches) the engine and drains it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.auth import ApiKey, KeyConfigError, access_policy_error, load_keys
from serve.deps import request_error
from serve.errors import UnhandledErrors, install_handlers
from serve.gateway import Gateway
from serve.limits import BodyLimit
from serve.logs import RequestContext
from serve.routes import admin, extract, health, openai, reference, schemas
from serve.settings import ServeSettings, SettingsError, deterministic_error, log_policy_error


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    gateway: Gateway = app.state.gateway
    try:
        await gateway.start()
    except BaseException:
        await gateway.stop()
        raise
    try:
        yield
    finally:
        await gateway.stop()


class RouteMetrics:
    """ASGI middleware: request count and latency per route template (not raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app, self.gateway = app, gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.gateway.metrics.requests.labels(route, str(status)).inc()
            self.gateway.metrics.latency.labels(route).observe(time.perf_counter() - started)


def create_app(settings: ServeSettings, keys: list[ApiKey] | None = None) -> FastAPI:
    """The gateway app. Refuses (SettingsError) to exist without keys unless open on loopback, with
    a log level that could write documents to the logs without --log-text, or with deterministic mode
    over an engine it does not start."""
    keys = load_keys(settings.api_keys_file, settings.api_keys) if keys is None else keys
    problem = access_policy_error(keys, settings.open_access, settings.host)
    if problem:
        raise KeyConfigError(problem)
    problem = log_policy_error(settings) or deterministic_error(settings)
    if problem:
        raise SettingsError(problem)
    gateway = Gateway.build(settings, keys)
    gateway.metrics.follow(gateway.admission)
    app = FastAPI(
        title="forma extraction API",
        version="1",
        description="Schema-constrained extraction with one fine-tuned LoRA adapter per live schema release.",
        lifespan=lifespan,
        # The spec is served by routes/reference.py behind a key; no browser docs pages.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # No 307 to a trailing-slash twin: its Location would be built from the client's Host header.
        redirect_slashes=False,
    )
    app.state.gateway = gateway
    install_handlers(app)
    for unreadable in (RequestValidationError, HTTPException):  # checks the key before saying why
        app.add_exception_handler(unreadable, request_error)
    for module in (extract, openai, schemas, health, admin, reference):
        app.include_router(module.router)
    app.add_middleware(UnhandledErrors)  # innermost: a crash is still counted and logged as a 500
    app.add_middleware(RouteMetrics, gateway=gateway)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(RequestContext)  # outermost: every response, 413s included, carries a request id
    return app
