"""HTTP client for the engine's OpenAI-compatible server: health, adapter loading, chat completions.

Cancelling `chat` (deadline, client disconnect) closes its upstream connection, and vLLM aborts the
request when its client goes away (`with_cancellation` on its routes), so no generation outlives its caller.
"""

from __future__ import annotations

from typing import Any

import httpx


class EngineUnavailable(RuntimeError):
    """The engine cannot be reached or dropped the connection: callers answer 503."""


class EngineRejected(RuntimeError):
    """The engine refused the request (a 4xx): callers answer 422 with its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class EngineClient:
    def __init__(self, base_url: str, max_connections: int) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # No read timeout here: the gateway's per-request deadline owns that decision.
        timeout = httpx.Timeout(None, connect=5.0)
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=timeout)

    async def healthy(self) -> bool:
        try:
            response = await self.http.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def load_adapter(self, name: str, path: str) -> None:
        """Load an adapter under its content-addressed name; an already-loaded name is success."""
        body = {"lora_name": name, "lora_path": path}
        response = await self._post("/v1/load_lora_adapter", body, timeout=120.0)
        if response.status_code == 200 or "already been loaded" in response.text:
            return
        raise EngineRejected(response.status_code, _message(response))

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._post("/v1/chat/completions", body)
        if response.status_code >= 500:
            raise EngineUnavailable(f"engine answered {response.status_code}: {_message(response)}")
        if response.status_code != 200:
            raise EngineRejected(response.status_code, _message(response))
        result: dict[str, Any] = response.json()
        return result

    async def _post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> httpx.Response:
        try:
            if timeout is None:
                return await self.http.post(path, json=body)
            return await self.http.post(path, json=body, timeout=timeout)
        except httpx.HTTPError as err:
            raise EngineUnavailable(f"engine unreachable at {self.base_url}: {type(err).__name__}") from err

    async def aclose(self) -> None:
        await self.http.aclose()


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])[:300]
    return str(body)[:300]
