"""The gateway's running state and its background duties: engine start, supervision, ledger watch, drain.

`Gateway` is built by `create_app` and lives on `app.state`; `lifespan` calls `start` and `stop`.
Supervision (RELIABILITY F2-F4): a child engine that dies is restarted; an engine that is alive but
finishes nothing is marked stalled (not ready, never restarted: liveness is not at stake); a drain
refuses new work and gives admitted requests `drain_timeout_s` before the engine is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import time
from dataclasses import dataclass, field

from serve.auth import ApiKey
from serve.engine_args import BASE_MODEL_NAME, batch_invariance, engine_command, engine_env
from serve.engine_client import EngineRejected, EngineUnavailable
from serve.engine_process import EngineProcess, engine_on_gpu, free_port
from serve.engine_watch import Health, WatchedEngineClient
from serve.limits import Admission
from serve.logs import log
from serve.metrics import Metrics
from serve.releases import ReleaseTable, ledger_signature
from serve.settings import ServeSettings

# vLLM exits within a few seconds of SIGTERM when idle; past this the group is killed, so a stopped
# gateway exits within drain_timeout_s + 10 s (RELIABILITY F2).
ENGINE_STOP_S = 6.0
# A child engine that is alive but refuses connections (or reports its core dead) this long is wedged,
# e.g. in a shutdown that never ends: it is killed and restarted like one that exited.
ENGINE_GONE_S = 30.0


class EngineStartError(RuntimeError):
    """The engine did not become healthy in time, or exited while starting."""


@dataclass
class Gateway:
    settings: ServeSettings
    keys: list[ApiKey]
    engine: WatchedEngineClient
    table: ReleaseTable
    metrics: Metrics
    admission: Admission
    process: EngineProcess | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    drain_deadline: float | None = None  # set once, by the first stop signal
    stalled_since: float | None = None  # set while the engine is stalled
    down_since: float | None = None  # set while the engine is down (refused, dead or exited)
    unanswered_since: float | None = None  # set while health checks time out (no answer either way)
    probe: asyncio.Task[None] | None = None
    batching: str | None = None  # how the child engine batches (deterministic mode), for the startup log

    @classmethod
    def build(cls, settings: ServeSettings, keys: list[ApiKey]) -> Gateway:
        metrics, process, batching = Metrics(), None, None
        url = settings.engine_url
        if url is None:
            if settings.base_model is None:
                raise EngineStartError("no --engine-url and no base model to start an engine with")
            port = settings.engine_port or free_port()
            gpu = settings.deterministic and engine_on_gpu()  # the device matters only to that mode
            command = engine_command(settings, settings.base_model, port, gpu)
            env = engine_env(dict(os.environ), settings, gpu)
            process = EngineProcess(command, env, settings.engine_log)
            url, batching = f"http://127.0.0.1:{port}", batch_invariance(settings, gpu).note
        table = ReleaseTable(settings, metrics)
        engine = WatchedEngineClient(url, max_connections=settings.max_in_flight + 8)
        admission = Admission(settings.max_in_flight, settings.max_queue)
        return cls(settings, keys, engine, table, metrics, admission, process, batching=batching)

    def set_ready(self, ready: bool, why: str) -> None:
        """Readiness for new requests; every change is logged with its reason (an operator reading a
        burst of 503s finds the cause in the log, not by guessing)."""
        if ready != self.admission.engine_ready:
            log("engine_ready" if ready else "engine_unready", reason=why)
        self.admission.engine_ready = ready
        self.metrics.engine_ready.set(1 if ready else 0)

    async def start(self) -> None:
        if self.process is not None:
            log("engine_starting", deterministic=self.settings.deterministic, batching=self.batching)
            await asyncio.to_thread(self.process.start)
        await self.wait_for_engine()
        report = await self.table.refresh(self.engine)
        log("releases", **report.model_dump())
        self.set_ready(True, "started")
        self.tasks = [asyncio.create_task(self.supervise()), asyncio.create_task(self.watch_ledger())]

    async def wait_for_engine(self) -> None:
        """Poll the engine's health with backoff, up to engine_start_timeout_s; fail fast if it exits."""
        deadline, delay = time.monotonic() + self.settings.engine_start_timeout_s, 0.5
        while time.monotonic() < deadline:
            if self.admission.draining:  # a stop signal while starting: give up now, not in 300 s
                raise EngineStartError("stopped while waiting for the engine to start")
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
        """Every engine_check_s: readiness follows the engine's health and progress."""
        while True:
            await asyncio.sleep(self.settings.engine_check_s)
            try:
                await self.check_engine()
            except Exception as err:  # keep supervising: one failed round must not end supervision
                self.set_ready(False, "supervision failed")
                log("supervise_failed", reason=repr(err))

    async def check_engine(self) -> None:
        """A down engine fails its pending calls at once (503, not a hang to the deadline); a child
        engine that exited, or stayed down ENGINE_GONE_S, is restarted; a stalled one is only unready."""
        exited = self.process is not None and not self.process.alive()
        health = "down" if exited else await self.engine.health()
        # Every answer (or its absence) is noted here, whichever branch acts on it below.
        if health != "unknown":
            self.unanswered_since = None
        elif self.unanswered_since is None:
            self.unanswered_since = time.monotonic()
        if health != "down":
            self.down_since = None
        else:
            failed = self.engine.drop_pending()
            if self.down_since is None:
                self.down_since = time.monotonic()
                log("engine_down", exited=exited, pending_failed=failed)
        down_s = time.monotonic() - self.down_since if self.down_since is not None else 0.0
        if self.process is not None and not self.admission.draining and (exited or down_s > ENGINE_GONE_S):
            await self.restart_engine()
        elif self.check_stall():
            self.set_ready(False, "stalled")
        else:
            self.follow_health(health)

    def follow_health(self, health: Health) -> None:
        """Readiness follows a health answer. No answer in time ("unknown": a busy 2-core machine can
        keep vLLM's API process from answering for seconds) changes nothing until it lasts
        engine_stall_s: one slow probe must not turn admitted-to-be traffic into 503s."""
        if health != "unknown":
            self.set_ready(health == "ok", f"health {health}")
            return
        unanswered_s = time.monotonic() - (self.unanswered_since or time.monotonic())
        if unanswered_s > self.settings.engine_stall_s:
            self.set_ready(False, f"no health answer for {unanswered_s:.0f} s")

    def check_stall(self) -> bool:
        """Stalled: calls wait at the engine and none completed for engine_stall_s. It ends when a
        completion arrives; new requests are refused meanwhile, so a probe gives the engine one to finish."""
        watch = self.engine.watch
        if self.stalled_since is None and watch.silent_for() > self.settings.engine_stall_s:
            self.stalled_since = time.monotonic()
            log("engine_stalled", waiting=watch.in_flight, silent_s=round(watch.silent_for(), 1))
        elif self.stalled_since is not None and watch.last_completed > self.stalled_since:
            log("engine_progressed", stalled_s=round(time.monotonic() - self.stalled_since, 1))
            self.stalled_since = None
        if self.stalled_since is not None and (self.probe is None or self.probe.done()):
            self.probe = asyncio.create_task(self.probe_engine())
        return self.stalled_since is not None

    async def probe_engine(self) -> None:
        """One 1-token completion on a model the engine serves; it completes when decoding resumes."""
        model = next(iter(self.table.loaded), BASE_MODEL_NAME)
        body = {"model": model, "messages": [{"role": "user", "content": "ok"}], "max_tokens": 1}
        with contextlib.suppress(EngineUnavailable, EngineRejected):
            await self.engine.chat(body | {"temperature": 0.0})

    async def restart_engine(self) -> None:
        assert self.process is not None
        self.set_ready(False, "engine restarting")
        died = self.down_since or time.monotonic()
        log("engine_died", returncode=self.process.process.returncode if self.process.process else None)
        await asyncio.to_thread(self.process.stop, 2.0)  # kill and reap what is left of the old group
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
        # A new engine: the old one's troubles died with it.
        self.stalled_since = self.down_since = self.unanswered_since = None
        self.set_ready(True, "engine restarted")
        log("engine_restarted", pid=self.process.pid, down_s=round(time.monotonic() - died, 1))

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

    def begin_drain(self, reason: str = "stop") -> None:
        """Refuse new work from now on (503, /readyz 503); admitted requests get drain_timeout_s.
        Safe to call from a signal handler; only the first call starts the clock."""
        # Draining is its own state: /readyz and admission check it before engine readiness, which keeps
        # following the engine (setting it false here was undone by the next healthy check, logged as
        # "engine_ready" in the middle of a drain).
        self.admission.draining = True
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.settings.drain_timeout_s
            # A signal lands inside whatever request was running: log outside its context (request id).
            contextvars.Context().run(log, "draining", reason=reason, in_flight=self.admission.count)

    def drained(self) -> bool:
        """Draining, and every admitted request has finished or the drain time is up."""
        if self.drain_deadline is None:
            return False
        return self.admission.count == 0 or time.monotonic() >= self.drain_deadline

    async def stop(self) -> None:
        """Drain: refuse new work, let admitted requests finish (bounded), then stop the engine."""
        self.begin_drain()
        while not self.drained():
            await asyncio.sleep(0.1)
        tasks = [*self.tasks, *([self.probe] if self.probe else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.engine.aclose()
        if self.process is not None:
            await asyncio.to_thread(self.process.stop, ENGINE_STOP_S)
        log("stopped", in_flight_left=self.admission.count)
