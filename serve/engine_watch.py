"""The gateway's view of its engine beyond "does /health answer": progress and loss (RELIABILITY F2-F4).

Stall: vLLM's /health proves only that its API process answers; a stuck scheduler keeps answering it
(vLLM #45388). So the client counts its own chat calls: when calls wait at the engine and none has
completed for `engine_stall_s`, the engine is stalled. Idle time is never a stall: the clock starts when
the first call goes out.

Loss: an engine whose health check is refused or says it is dead (vLLM answers 503 once its engine core
died) will never answer the calls waiting on it. On SIGTERM vLLM stops its engine core, then waits
without limit for open connections, so those calls would hang to their deadline and keep vLLM from
exiting. `drop_pending` fails them at once with EngineUnavailable (503).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import httpx

from serve.engine_client import EngineClient, EngineUnavailable

Health = Literal["ok", "down", "unknown"]  # answered 200 / refused or answered non-200 / no answer


class ProgressWatch:
    """Chat calls waiting at the engine, and when one last completed."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.busy_since = time.monotonic()  # when in_flight last went from 0 to 1
        self.last_completed = float("-inf")

    def started(self) -> None:
        if self.in_flight == 0:
            self.busy_since = time.monotonic()
        self.in_flight += 1

    def finished(self, completed: bool) -> None:
        self.in_flight -= 1
        if completed:
            self.last_completed = time.monotonic()

    def silent_for(self) -> float:
        """Seconds during which calls were waiting and none completed; 0 when nothing is in flight."""
        if not self.in_flight:
            return 0.0
        return time.monotonic() - max(self.busy_since, self.last_completed)


class WatchedEngineClient(EngineClient):
    """The engine client, counting its chat calls (a completion is progress; a cancelled call or an
    error is not) and able to fail every pending call at once when the engine is lost."""

    def __init__(self, base_url: str, max_connections: int) -> None:
        super().__init__(base_url, max_connections)
        self.watch = ProgressWatch()
        self.health_timeout_s = 5.0  # past it a health check is "unknown": slow is not dead
        self._lost = asyncio.Event()  # set once for the calls pending at a loss, then replaced

    async def health(self) -> Health:
        try:
            response = await self.http.get("/health", timeout=self.health_timeout_s)
        except httpx.ConnectError:
            return "down"
        except httpx.HTTPError:
            return "unknown"  # slow is not dead: a busy engine may answer late
        return "ok" if response.status_code == 200 else "down"

    def drop_pending(self) -> int:
        """Fail the calls pending now (EngineUnavailable); calls made later are unaffected."""
        lost, self._lost = self._lost, asyncio.Event()
        lost.set()
        return self.watch.in_flight

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        call = asyncio.ensure_future(super().chat(body))
        lost = asyncio.ensure_future(self._lost.wait())
        self.watch.started()
        completed = False
        try:
            await asyncio.wait({call, lost}, return_when=asyncio.FIRST_COMPLETED)
            if not call.done():
                raise EngineUnavailable("the engine went away while this request was in flight")
            result = call.result()
            completed = True
            return result
        finally:
            for task in (call, lost):
                task.cancel()  # closing the call's connection aborts it inside vLLM
            await asyncio.gather(call, lost, return_exceptions=True)
            self.watch.finished(completed)
