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
from serve.logs import log, logger
from serve.tokens import context_error, count_prompt_tokens

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
    dropped = request.app.state.gateway.metrics.dropped  # RELIABILITY F1: count what was cancelled
    if gone in done:
        dropped.labels("client_closed").inc()
        raise ApiError(499, "client_closed", "the client disconnected; its generation was cancelled")
    dropped.labels("timeout").inc()
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


async def check_context(gw: Gateway, binding: Binding, body: dict[str, Any]) -> None:
    """413 before the engine when the prompt + max_tokens cannot fit its context (RELIABILITY B3). The
    tokenizer is the served base model's: configured, else the folder the engine reports serving."""
    path = str(gw.settings.base_model) if gw.settings.base_model else binding.base_model_path
    if path is None:
        # No local tokenizer (the engine's model is on another host). vLLM then stops at its context,
        # which answers output_truncated: explicit, but after a wasted prefill.
        return
    try:
        prompt = await asyncio.to_thread(count_prompt_tokens, path, body["messages"])
    except (OSError, ValueError) as err:  # a base folder without tokenizer files: same as no tokenizer
        log("tokenizer_unavailable", error=type(err).__name__)
        return
    limit = await gw.engine.max_model_len() or gw.settings.max_model_len
    refusal = context_error(prompt, body["max_tokens"], limit)
    if refusal is not None:
        gw.metrics.rejections.labels("context_too_long").inc()
        raise refusal


async def generate(gw: Gateway, binding: Binding, text: str, max_tokens: int | None = None) -> Generated:
    """Decode `text` with the binding's adapter, constrained by its schema, and validate the result."""
    cap = gw.settings.max_tokens
    body = engine_body(binding, text, min(max_tokens or cap, cap))  # always explicit, never over the cap
    await check_context(gw, binding, body)
    try:
        completion = await _complete(gw, binding, body)
    except EngineUnavailable as err:
        gw.set_ready(False, "engine unavailable")
        # RELIABILITY D5: the engine's own message (which may quote the request, or name its URL)
        # stays out of the reply; the log has it at debug only, which needs --log-text.
        log("engine_error", kind="unavailable")
        logger.debug("engine_error_message", extra={"fields": {"message": str(err)}})
        raise ApiError(
            503, "unavailable", "the engine is unavailable; retry shortly", headers={"Retry-After": "5"}
        ) from None
    except EngineRejected as err:
        raise ApiError(422, "engine_rejected", f"the engine refused the request: {err}") from None
    try:
        # Off the event loop: the output check matches untrusted patterns (bounded, GIL released by
        # `regex`), so one slow answer never holds /readyz or other requests (RELIABILITY A4).
        generated = await asyncio.to_thread(read_completion, completion, binding.schema)
    except ApiError as err:
        gw.metrics.generation_failures.labels(err.code).inc()
        raise
    gw.metrics.tokens.labels("prompt", binding.schema_name).inc(generated.prompt_tokens)
    gw.metrics.tokens.labels("completion", binding.schema_name).inc(generated.completion_tokens)
    return generated
