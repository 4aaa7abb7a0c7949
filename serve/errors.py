"""Typed errors: every non-2xx the gateway sends has one body shape, a stable code and the request id.

Routes raise `ApiError`; the handlers here turn it (and FastAPI's validation errors) into `ErrorBody`.
`responses(...)` documents the statuses a route can return, so the OpenAPI spec lists every one.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field


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
    403: "The key is not scoped to this schema or lacks the admin scope (code forbidden).",
    404: "Unknown schema or model, or no live release for it (code not_found).",
    413: "Body, text or batch larger than the configured limits (code too_large).",
    422: "Malformed request (code invalid_request), or a response_format that differs from the schema.",
    429: "Too many requests in flight; retry after the Retry-After seconds (code overloaded).",
    502: "The generation failed: output_truncated, output_invalid_json or output_schema_violation.",
    503: "Engine not ready, restarting, or the gateway is draining (code unavailable).",
    504: "The request passed its deadline; its generation was cancelled (code timeout).",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": DESCRIPTIONS[status]} for status in statuses}


def error_response(request: Request, err: ApiError) -> JSONResponse:
    info = ErrorInfo(
        code=err.code,
        message=err.message,
        request_id=getattr(request.state, "request_id", None),
        details=err.details,
    )
    return JSONResponse(ErrorBody(error=info).model_dump(), status_code=err.status, headers=err.headers)


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [
        ErrorDetail(pointer="/" + "/".join(str(p) for p in e["loc"][1:]), message=e["msg"])
        for e in exc.errors()
    ]
    err = ApiError(422, "invalid_request", "the request body does not match the API; see details", details)
    return error_response(request, err)


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, error_response)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
