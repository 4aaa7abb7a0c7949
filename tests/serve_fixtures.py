"""Shared fixtures of the serve tests and the reliability battery (a pytest plugin, see conftest).

One real vLLM engine for the whole session (`engine_url`), a forma home with registered schemas and
promoted releases (`home`), and a factory of real gateways on free loopback ports (`gateway`).
Tests that change the shared ledger put it back as they found it.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from jsonschema import Draft202012Validator, FormatChecker
from test_serve_support import INVOICE, make_adapters, promote_run, register_schemas, write_run

from serve.app import create_app
from serve.engine_args import engine_command, engine_env
from serve.engine_process import EngineProcess, free_port
from serve.server import server_config
from serve.settings import ServeSettings

ADMIN = "admin-key-0123456789abcdef"
CONTACT_ONLY = "contact-key-0123456789abcdef"
CONTACT: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "role": {"enum": ["buyer", "seller"]}},
    "required": ["name", "role"],
    "additionalProperties": False,
}


class Home:
    """A forma home with registered schemas, runs and a ledger, shared by the session's tests."""

    def __init__(self, root: Path, base_model: Path) -> None:
        self.root, self.base_model = root, base_model
        self.schemas, self.runs, self.releases = root / "schemas", root / "runs", root / "releases"
        self.adapters = [root / "adapters" / f"a{i}" for i in range(5)]
        make_adapters(base_model, self.adapters)
        self.versions = register_schemas(self.schemas, base_model, {"invoice": INVOICE, "contact": CONTACT})

    def run(self, name: str, adapter: int, run_id: str) -> Path:
        return write_run(
            self.runs, self.base_model, self.adapters[adapter], name, self.versions[name], run_id
        )


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory, base_model: Path) -> Home:
    h = Home(tmp_path_factory.mktemp("serve-home"), base_model)
    promote_run(h.releases, h.run("invoice", 0, "invoice-r0"))
    promote_run(h.releases, h.run("contact", 1, "contact-r1"))
    return h


@pytest.fixture(scope="session")
def engine_url(home: Home, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real vLLM engine for the whole session, started by the gateway's own process code.
    FORMA_TEST_ENGINE_URL reuses a running one (same base model) to iterate faster."""
    if os.environ.get("FORMA_TEST_ENGINE_URL"):
        yield os.environ["FORMA_TEST_ENGINE_URL"]
        return
    port = free_port()
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    stub = ServeSettings(
        schemas_root=home.schemas, runs_root=home.runs, releases_root=home.releases, max_cpu_loras=4
    )
    process = EngineProcess(engine_command(stub, home.base_model, port), engine_env(dict(os.environ)), log)
    process.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert process.alive(), process.log_tail()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        yield url
    finally:
        process.stop()


class Gateway:
    """The gateway app under the uvicorn config `forma serve` uses (`server_config`: its head limits,
    keep-alive and drain wrapper), on a free loopback port, in a thread."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings, self.port = settings, settings.port
        self.app = create_app(settings)
        self.url = f"http://127.0.0.1:{settings.port}"
        self.server = uvicorn.Server(server_config(self.app, settings))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Gateway:
        self.thread.start()
        # Startup waits for the engine: seconds for a running one, a vLLM start for a child engine.
        starting = 60 if self.settings.engine_url else self.settings.engine_start_timeout_s + 30
        deadline = time.monotonic() + starting
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "gateway did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def client(self, key: str | None = ADMIN, timeout: float = 120) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


def home_settings(home: Home, engine_url: str | None, **overrides: Any) -> ServeSettings:
    """Gateway settings over the shared home and an engine (None: the gateway starts its own, from
    `base_model` in overrides), on a free port, with the fixture keys."""
    fields: dict[str, Any] = {
        "schemas_root": home.schemas,
        "runs_root": home.runs,
        "releases_root": home.releases,
        "engine_url": engine_url,
        "port": free_port(),
        "ledger_poll_s": 0.2,
        "api_keys": f"{ADMIN}=*,admin;{CONTACT_ONLY}=contact",
    }
    return ServeSettings(**(fields | overrides))


@pytest.fixture
def gateway(home: Home, engine_url: str):
    """Factory: a started gateway with the given setting overrides (stopped after the test)."""
    started: list[Gateway] = []

    def start(**overrides: Any) -> Gateway:
        gw = Gateway(home_settings(home, engine_url, **overrides)).__enter__()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.__exit__()


def valid(schema: dict[str, Any], value: Any) -> bool:
    return Draft202012Validator(schema, format_checker=FormatChecker()).is_valid(value)


def engine_state(url: str) -> tuple[float, float]:
    """(requests running, requests finished) from the engine's own metrics. vLLM 0.32 does not count
    aborts in request_success_total, so an aborted request shows as: no longer running, never finished."""
    text = httpx.get(url + "/metrics").text
    running = sum(float(v) for v in re.findall(r"^vllm:num_requests_running{[^}]*} ([0-9.]+)", text, re.M))
    finished = sum(float(v) for v in re.findall(r"^vllm:request_success_total{[^}]*} ([0-9.]+)", text, re.M))
    return running, finished


def assert_aborted(url: str, finished_before: float) -> None:
    deadline = time.monotonic() + 2  # RELIABILITY F1: the abort reaches the engine within about a second
    while engine_state(url)[0] and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # longer than the generations would have taken: had they run on, they would finish now
    assert engine_state(url) == (0.0, finished_before)
