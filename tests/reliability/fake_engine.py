"""FakeEngine: a fault-injecting TEST DOUBLE of vLLM's OpenAI-compatible server.

RELIABILITY.md allows a double only for faults the real engine cannot be made to show on demand: an
output that breaks the schema despite constrained decoding, a scripted truncation, an engine that
accepts work and never answers (a scheduler stall), a health check answered late, a 500 with a planted secret in it, exact call and
abort counts. Everything else in the battery runs against the real vLLM engine.

It speaks the subset of the API the gateway uses: `GET /health`, `GET /v1/models`,
`POST /v1/load_lora_adapter`, `POST /v1/chat/completions`. Knobs are plain attributes, changed by the
test while the server runs; logs are plain lists the test reads.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serve.engine_process import free_port

# (request body) -> (content, finish_reason); the default answers with `FakeEngine.content`.
Reply = Callable[[dict[str, Any]], tuple[str, str]]


@dataclass
class Knobs:
    latency_s: float = 0.0  # time before the answer
    hold: bool = False  # accept chat requests and never answer (a stall or a hang)
    status: int = 200  # != 200: chat answers this status with `error_message`
    error_message: str = "internal error"
    healthy: bool = True  # what GET /health says (vLLM keeps saying 200 during a stall)
    health_delay_s: float = 0.0  # time before GET /health answers (an API process starved of CPU)
    concurrency: int = 8  # requests decoded at once; the rest wait, like a full engine batch
    content: str = "{}"
    finish_reason: str = "stop"
    reply: Reply | None = None
    completion_tokens: int = 7


@dataclass
class Log:
    requests: list[dict[str, Any]] = field(default_factory=list)  # every chat body, in arrival order
    aborts: int = 0  # chat requests whose client went away before the answer
    answered: int = 0
    loads: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    health_checks: int = 0  # GET /health calls: proves readiness probes never reach the engine
    open: int = 0  # chat requests received and not yet answered (waiting for a slot included)
    max_open: int = 0


class FakeEngine:
    """`with FakeEngine() as engine:` serves on a free loopback port at `engine.url`."""

    def __init__(self, **knobs: Any) -> None:
        self.knobs = Knobs(**knobs)
        self.log = Log()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._slots: asyncio.Semaphore | None = None
        app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/models", self.models),
                Route("/v1/load_lora_adapter", self.load, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> FakeEngine:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "fake engine did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.knobs.hold = False
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def chat_calls(self) -> int:
        return len(self.log.requests)

    async def health(self, request: Request) -> Response:
        self.log.health_checks += 1
        await asyncio.sleep(self.knobs.health_delay_s)
        return Response(status_code=200 if self.knobs.healthy else 503)

    async def models(self, request: Request) -> Response:
        names = [load["lora_name"] for load in self.log.loads]
        return JSONResponse({"object": "list", "data": [{"id": n, "object": "model"} for n in names]})

    async def load(self, request: Request) -> Response:
        body = await request.json()
        self.log.loads.append(body)
        return Response("Success", status_code=200)

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.log.requests.append(body)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.knobs.concurrency)
        work = asyncio.ensure_future(self._answer(body))
        gone = asyncio.ensure_future(_disconnected(request))
        self.log.open += 1
        self.log.max_open = max(self.log.max_open, self.log.open)
        try:
            done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.log.open -= 1
        for task in (work, gone):
            task.cancel()
        await asyncio.gather(work, gone, return_exceptions=True)
        if work not in done:
            self.log.aborts += 1
            return Response(status_code=499)
        self.log.answered += 1
        return work.result()

    async def _answer(self, body: dict[str, Any]) -> Response:
        assert self._slots is not None
        async with self._slots:
            self.log.in_flight += 1
            self.log.max_in_flight = max(self.log.max_in_flight, self.log.in_flight)
            try:
                await asyncio.sleep(self.knobs.latency_s)
                while self.knobs.hold:
                    await asyncio.sleep(0.05)
            finally:
                self.log.in_flight -= 1
        if self.knobs.status != 200:
            error = {"error": {"message": self.knobs.error_message, "code": self.knobs.status}}
            return JSONResponse(error, status_code=self.knobs.status)
        content, finish = (self.knobs.reply or self._default)(body)
        return JSONResponse(self._completion(body, content, finish))

    def _default(self, body: dict[str, Any]) -> tuple[str, str]:
        return self.knobs.content, self.knobs.finish_reason

    def _completion(self, body: dict[str, Any], content: str, finish: str) -> dict[str, Any]:
        prompt_tokens = len(json.dumps(body.get("messages", []))) // 4
        return {
            "id": f"chatcmpl-fake-{len(self.log.requests)}",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": self.knobs.completion_tokens,
                "total_tokens": prompt_tokens + self.knobs.completion_tokens,
            },
        }


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
