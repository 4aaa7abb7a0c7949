"""HTTP client for the engine's OpenAI-compatible server: health, adapter loading, chat completions.

Cancelling `chat` (deadline, client disconnect) closes its upstream connection, and vLLM aborts the
request when its client goes away (`with_cancellation` on its routes), so no generation outlives its caller.
"""

from __future__ import annotations

from pathlib import Path
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
        self._base_card: dict[str, Any] | None = None
        self._asked = False

    async def base_card(self) -> dict[str, Any] | None:
        """The engine's own card for its base model (vLLM lists `root`, its folder, and `max_model_len`),
        read once: the gateway then tokenizes with and checks adapters against what the engine serves."""
        if not self._asked:
            try:
                response = await self.http.get("/v1/models", timeout=10.0)
                cards = response.json().get("data", []) if response.status_code == 200 else []
            except (httpx.HTTPError, ValueError, AttributeError):
                return None  # unreachable now: ask again next time
            self._asked = True
            bases = [c for c in cards if isinstance(c, dict) and c.get("root") and c.get("parent") is None]
            self._base_card = bases[0] if bases else None
        return self._base_card

    async def served_base(self) -> Path | None:
        """The base model folder the engine serves, when it is a folder on this machine."""
        card = await self.base_card()
        root = Path(str(card["root"])) if card else None
        return root if root is not None and root.is_dir() else None

    async def max_model_len(self) -> int | None:
        card = await self.base_card()
        value = card.get("max_model_len") if card else None
        return value if isinstance(value, int) else None

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
