"""The gateway's running state and its background duties: engine start, supervision, ledger watch, drain.

`Gateway` is built by `create_app` and lives on `app.state`; `lifespan` calls `start` and `stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field

from serve.auth import ApiKey
from serve.engine_args import engine_command, engine_env
from serve.engine_client import EngineClient
from serve.engine_process import EngineProcess, free_port
from serve.limits import Admission
from serve.logs import log
from serve.metrics import Metrics
from serve.releases import ReleaseTable, ledger_signature
from serve.settings import ServeSettings


class EngineStartError(RuntimeError):
    """The engine did not become healthy in time, or exited while starting."""


@dataclass
class Gateway:
    settings: ServeSettings
    keys: list[ApiKey]
    engine: EngineClient
    table: ReleaseTable
    metrics: Metrics
    admission: Admission
    process: EngineProcess | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: ServeSettings, keys: list[ApiKey]) -> Gateway:
        metrics, process = Metrics(), None
        url = settings.engine_url
        if url is None:
            if settings.base_model is None:
                raise EngineStartError("no --engine-url and no base model to start an engine with")
            port = settings.engine_port or free_port()
            command = engine_command(settings, settings.base_model, port)
            process = EngineProcess(command, engine_env(dict(os.environ)), settings.engine_log)
            url = f"http://127.0.0.1:{port}"
        table = ReleaseTable(
            settings.schemas_root, settings.releases_root, settings.base_model_sha256, metrics
        )
        engine = EngineClient(url, max_connections=settings.max_in_flight + 8)
        return cls(settings, keys, engine, table, metrics, Admission(settings.max_in_flight), process)

    def set_ready(self, ready: bool) -> None:
        self.admission.engine_ready = ready
        self.metrics.engine_ready.set(1 if ready else 0)

    async def start(self) -> None:
        if self.process is not None:
            await asyncio.to_thread(self.process.start)
        await self.wait_for_engine()
        report = await self.table.refresh(self.engine)
        log("releases", **report.model_dump())
        self.set_ready(True)
        self.tasks = [asyncio.create_task(self.supervise()), asyncio.create_task(self.watch_ledger())]

    async def wait_for_engine(self) -> None:
        """Poll the engine's health with backoff, up to engine_start_timeout_s; fail fast if it exits."""
        deadline, delay = time.monotonic() + self.settings.engine_start_timeout_s, 0.5
        while time.monotonic() < deadline:
            if self.process is not None and not self.process.alive():
                raise EngineStartError(
                    f"the engine exited while starting; its log ends:\n{self.process.log_tail()}"
                )
            if await self.engine.healthy():
                return
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        raise EngineStartError(
            f"the engine at {self.engine.base_url} was not healthy after "
            f"{self.settings.engine_start_timeout_s:.0f} s"
        )

    async def supervise(self) -> None:
        """Readiness follows the engine's health; a child engine that died is restarted."""
        while True:
            await asyncio.sleep(self.settings.engine_check_s)
            try:
                if self.process is not None and not self.process.alive() and not self.admission.draining:
                    await self.restart_engine()
                else:
                    self.set_ready(await self.engine.healthy())
            except Exception as err:  # keep supervising: one failed round must not end supervision
                self.set_ready(False)
                log("supervise_failed", reason=repr(err))

    async def restart_engine(self) -> None:
        assert self.process is not None
        self.set_ready(False)
        log("engine_died", returncode=self.process.process.returncode if self.process.process else None)
        await asyncio.to_thread(self.process.stop, 2.0)  # reap what is left of the old group
        await asyncio.to_thread(self.process.start)
        self.metrics.engine_restarts.inc()
        try:
            await self.wait_for_engine()
        except EngineStartError as err:
            log("engine_restart_failed", reason=str(err))
            return  # the next supervision round tries again
        self.table.loaded.clear()  # a new engine has no adapters: reload the live ones
        for binding in list(self.table.bindings.values()):
            with contextlib.suppress(Exception):
                await self.table.ensure_loaded(self.engine, binding)
        self.set_ready(True)
        log("engine_restarted", pid=self.process.pid)

    async def watch_ledger(self) -> None:
        """Deploy without restart: a changed ledger file (promote, rollback) rebinds on the next request."""
        while True:
            await asyncio.sleep(self.settings.ledger_poll_s)
            try:
                if ledger_signature(self.settings.releases_root) != self.table.signature:
                    report = await self.table.refresh(self.engine)
                    log("releases", **report.model_dump())
            except Exception as err:  # e.g. a ledger line being hand-edited: keep serving what is bound
                log("ledger_read_failed", reason=repr(err))

    async def stop(self) -> None:
        """Drain: refuse new work, let admitted requests finish (bounded), then stop the engine."""
        self.admission.draining = True
        self.set_ready(False)
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self.admission.count and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.engine.aclose()
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)
        log("stopped", in_flight_left=self.admission.count)
