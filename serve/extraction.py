"""One extraction against the engine, under the request's deadline and its client's presence.

`guarded` races the work against the deadline (504) and the client's disconnect; either way the work
is cancelled, which closes its upstream connection and aborts the generation inside vLLM.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request

from serve.engine_client import EngineRejected, EngineUnavailable
from serve.errors import ApiError
from serve.gateway import Gateway
from serve.generation import Binding, Generated, engine_body, read_completion

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    # The body was already read (FastAPI parsed it), so the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def guarded(work: Awaitable[T], request: Request, timeout_s: float) -> T:
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, gone):
            pending.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)
    if task in done:
        return task.result()
    if gone in done:
        raise ApiError(499, "client_closed", "the client disconnected; its generation was cancelled")
    raise ApiError(
        504,
        "timeout",
        f"no result within {timeout_s:g} s; the generation was cancelled",
        headers={"Retry-After": "1"},
    )


async def _complete(gw: Gateway, binding: Binding, body: dict[str, Any]) -> dict[str, Any]:
    await gw.table.ensure_loaded(gw.engine, binding)
    try:
        return await gw.engine.chat(body)
    except EngineRejected as err:
        if err.status != 404:
            raise
    # 404: an engine behind --engine-url restarted and forgot its adapters; load it again, once.
    gw.table.loaded.discard(binding.release_id)
    await gw.table.ensure_loaded(gw.engine, binding)
    return await gw.engine.chat(body)


async def generate(gw: Gateway, binding: Binding, text: str, max_tokens: int | None = None) -> Generated:
    """Decode `text` with the binding's adapter, constrained by its schema, and validate the result."""
    cap = gw.settings.max_tokens
    body = engine_body(binding, text, min(max_tokens or cap, cap))
    try:
        completion = await _complete(gw, binding, body)
    except EngineUnavailable as err:
        gw.set_ready(False)
        raise ApiError(
            503,
            "unavailable",
            f"the engine is unavailable ({err}); retry shortly",
            headers={"Retry-After": "5"},
        ) from None
    except EngineRejected as err:
        raise ApiError(422, "engine_rejected", f"the engine refused the request: {err}") from None
    try:
        generated = read_completion(completion, binding.schema)
    except ApiError as err:
        gw.metrics.generation_failures.labels(err.code).inc()
        raise
    gw.metrics.tokens.labels("prompt", binding.schema_name).inc(generated.prompt_tokens)
    gw.metrics.tokens.labels("completion", binding.schema_name).inc(generated.completion_tokens)
    return generated
