"""Typed errors: every non-2xx the gateway sends has one body shape, a stable code and the request id.

Routes raise `ApiError`; the handlers here turn it (and FastAPI's validation errors, Starlette's 404/405,
and any unexpected exception) into `ErrorBody`. `responses(...)` documents the statuses a route can
return, so the OpenAPI spec lists every one. Error messages never carry a filesystem path or an internal
URL (`redact`), and a 500 carries only its code and the request id (RELIABILITY D4, D5).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.logs import log, logger


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pointer: str = Field(description="JSON pointer into the request body or the generated output.")
    message: str


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Stable machine-readable reason, e.g. output_truncated.")
    message: str = Field(description="What went wrong and how to fix it.")
    request_id: str | None = None
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: ErrorInfo


class ApiError(Exception):
    """An error response: status, code, message, optional pointers and headers (Retry-After)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[ErrorDetail] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.headers = headers or {}


DESCRIPTIONS = {
    401: "No API key, or an unknown one (code unauthorized).",
    403: "The key lacks the admin scope (code forbidden).",
    404: "Unknown schema or model, one this key is not scoped to, or no live release for it (code "
    "not_found): the same answer in every case, so names cannot be probed.",
    408: "The body did not arrive within FORMA_SERVE_BODY_TIMEOUT_S (code body_timeout); connection closed.",
    409: "response_format names a schema other than the one the model's release was trained on "
    "(code schema_mismatch).",
    413: "Body, text or batch larger than the configured limits (code too_large).",
    422: "Malformed request: not JSON, unknown fields, loosely typed values (code invalid_request).",
    429: "Too many requests in flight and queued; retry after the Retry-After seconds (code overloaded).",
    431: "Request head over FORMA_SERVE_MAX_HEADER_BYTES or FORMA_SERVE_MAX_HEADERS lines; connection closed.",
    499: "The client disconnected; its generation was cancelled (code client_closed; never read).",
    500: "An unexpected server error (code internal): the body carries only the request id to quote.",
    502: "The generation failed: output_truncated, output_invalid_json or output_schema_violation.",
    503: "Engine not ready, restarting, or the gateway is draining (code unavailable).",
    504: "The request passed its deadline; its generation was cancelled (code timeout).",
}
# What any route can answer before or around its own logic: body limits, header limits, a crash.
TRANSPORT = (408, 413, 431, 500)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": ErrorBody, "description": DESCRIPTIONS[status]}
        for status in sorted({*statuses, *TRANSPORT})
    }


# An absolute filesystem path of two or more parts (not one of the API's own routes), or any URL.
_PATH = re.compile(r"(?<![\w.:/~-])/(?!v1/|admin/)(?:[\w.@+~-]+/)+([\w.@+~-]*)")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>)]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` without internal URLs or filesystem paths (a path keeps its last part, to stay useful)."""
    return _PATH.sub(lambda m: "…/" + m.group(1), _URL.sub("<internal url>", text))


def error_payload(
    code: str, message: str, request_id: str | None, details: list[ErrorDetail] | None = None
) -> dict[str, Any]:
    safe = [ErrorDetail(pointer=d.pointer, message=redact(d.message)) for d in details or []]
    info = ErrorInfo(code=code, message=redact(message), request_id=request_id, details=safe)
    return ErrorBody(error=info).model_dump()


def error_response(request: Request, err: ApiError) -> JSONResponse:
    rid = getattr(request.state, "request_id", None)
    body = error_payload(err.code, err.message, rid, err.details)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


async def send_error(send: Send, status: int, code: str, message: str, scope: Scope) -> None:
    """An error answered straight from ASGI middleware (before or around FastAPI); closes the connection."""
    body = error_payload(code, message, scope.get("state", {}).get("request_id"))
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def request_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [
        ErrorDetail(pointer="/" + "/".join(str(p) for p in e["loc"][1:]), message=e["msg"])
        for e in exc.errors()
    ]
    err = ApiError(422, "invalid_request", "the request body does not match the API; see details", details)
    return error_response(request, err)


HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own answers (unknown path 404, wrong method 405) in the one error shape."""
    code = HTTP_CODES.get(exc.status_code, "http_error")
    message = {404: "no such route; see the API reference", 405: "method not allowed on this route"}
    headers = dict(exc.headers) if exc.headers else None
    err = ApiError(exc.status_code, code, message.get(exc.status_code, str(exc.detail)), None, headers)
    return error_response(request, err)


def install_handlers(app: FastAPI) -> None:
    """ApiError's handler. Validation errors and Starlette's own go through `deps.request_error`,
    which checks the key first and then calls `request_validation_error` or `http_error`."""
    app.add_exception_handler(ApiError, error_response)  # type: ignore[arg-type]


def log_unhandled(exc: BaseException) -> None:
    """The exception's type and where it was raised; its message only at debug, since it may quote
    a document (debug needs --log-text, see settings.log_policy_error)."""
    frames, tb = [], exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}:{code.co_name}")
        tb = tb.tb_next
    log("unhandled_error", error=type(exc).__name__, where=frames[-6:])
    logger.log(logging.DEBUG, "unhandled_error_message", extra={"fields": {"message": str(exc)}})


class UnhandledErrors:
    """ASGI middleware: an unexpected exception becomes a 500 `internal` with the request id, never a
    stack trace or an exception message; nothing is re-raised for the server to print."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log_unhandled(exc)
            if started:  # too late for a status: the server closes the connection
                return
            message = "unexpected server error; quote the request id when reporting it"
            await send_error(send, 500, "internal", message, scope)
