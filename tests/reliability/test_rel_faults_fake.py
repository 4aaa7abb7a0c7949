"""RELIABILITY F4, and the mechanisms under F2 and F3, against the named TEST DOUBLE `FakeEngine`.

A real vLLM cannot be made to stall on demand (its scheduler either runs or crashes): `FakeEngine(hold=
True)` accepts chat requests and never answers while its /health keeps saying 200, like the stalled
engine of vLLM #45388. It also stands for an engine that is not up yet (healthy=False at startup) and
for one whose core died under pending requests (hold, then healthy=False: vLLM's /health says 503 and
its requests never return). The real-engine versions of F1-F3 are test_rel_faults_cancel.py and
test_rel_faults_process.py. Fast: no vLLM, no training.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fake_engine import FakeEngine
from serve_fixtures import ADMIN, Gateway, Home, home_settings

from serve.gateway import EngineStartError
from serve.gateway import Gateway as GatewayState
from serve.settings import ServeSettings

CONTACT_OK = json.dumps({"name": "Ann", "role": "buyer"})


def settings(home: Home, engine_url: str, **overrides: Any) -> ServeSettings:
    return home_settings(home, engine_url, **({"api_keys": f"{ADMIN}=*,admin"} | overrides))


@contextmanager
def fake_gateway(home: Home, fake: FakeEngine, **overrides: Any) -> Iterator[Gateway]:
    gw = Gateway(settings(home, fake.url, **overrides)).__enter__()
    try:
        yield gw
    finally:
        gw.__exit__()


def wait_for(check: Callable[[], bool], within: float) -> float:
    """Seconds until `check()` held; fails after `within` (a hang guard, not a timing assertion)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, f"condition not met within {within} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_f4_stalled_engine_fails_readiness_not_liveness_until_progress_resumes(home: Home) -> None:
    """F4: requests wait at an engine whose /health says 200 and that finishes nothing. Within
    engine_stall_s /readyz says 503 "engine stalled" while /healthz stays 200 (no restart loop); new
    requests are refused with 503 at once; the stuck ones end with 504 at their deadline, are aborted
    at the engine and free their slots; readiness comes back only once the engine completes work."""
    with (
        FakeEngine(content=CONTACT_OK) as fake,
        fake_gateway(home, fake, engine_stall_s=1.0, engine_check_s=0.2, request_timeout_s=6.0) as gw,
    ):
        state: GatewayState = gw.app.state.gateway
        with gw.client() as client:
            assert client.get("/readyz").status_code == 200
            fake.knobs.hold = True

            def stuck(_: int) -> httpx.Response:
                with gw.client() as own:
                    return own.post("/v1/extract/contact", json={"text": "Ann buys a bike."})

            with ThreadPoolExecutor(2) as pool:
                sent = time.monotonic()
                pending = [pool.submit(stuck, i) for i in range(2)]
                wait_for(lambda: client.get("/readyz").json()["reason"] == "engine stalled", within=5)
                # Readiness went first: the stuck requests are still waiting for their deadline.
                assert not any(f.done() for f in pending)
                assert client.get("/healthz").status_code == 200
                refused = client.post("/v1/extract/contact", json={"text": "Bob sells."})
                assert refused.status_code == 503 and refused.headers["retry-after"]
                results = [f.result(timeout=30) for f in pending]
            assert [r.status_code for r in results] == [504, 504]
            assert time.monotonic() - sent >= 6.0
            assert all(r.json()["error"]["code"] == "timeout" for r in results)
            wait_for(lambda: fake.log.aborts >= 2 and state.admission.count == 0, within=5)
            # Nothing completed yet: still stalled (not flapping back to ready), still alive.
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["reason"] == "engine stalled"
            assert client.get("/healthz").status_code == 200

            fake.knobs.hold = False  # the scheduler moves again: the gateway's probe completes
            wait_for(lambda: client.get("/readyz").status_code == 200, within=10)
            served = client.post("/v1/extract/contact", json={"text": "Ann buys a bike."})
            assert served.status_code == 200 and served.json()["data"] == json.loads(CONTACT_OK)
            metrics = client.get("/metrics").text
        assert 'forma_dropped_requests_total{reason="timeout"} 2.0' in metrics


def test_f4_health_probes_never_reach_the_engine_and_reveal_nothing(home: Home) -> None:
    """F4: /healthz and /readyz read gateway state only (no engine call per probe, so a probe storm
    costs the engine nothing) and their bodies carry no version, URL, path or configuration."""
    with FakeEngine() as fake, fake_gateway(home, fake, engine_check_s=3600) as gw:
        with gw.client(key=None) as anonymous:
            before = fake.log.health_checks
            answers = [anonymous.get(p) for _ in range(25) for p in ("/healthz", "/readyz")]
        assert fake.log.health_checks == before
        assert {r.status_code for r in answers} == {200}
        assert answers[0].json() == {"status": "ok"}
        ready = answers[1].json()
        assert set(ready) == {"ready", "reason", "schemas"} and ready["ready"] is True
        bodies = " ".join(r.text for r in answers[:2])
        for secret in ("vllm", "0.32", fake.url, str(fake.port), "forma-base", str(home.root), "version"):
            assert secret not in bodies


def test_f4_progress_by_any_completion_keeps_a_busy_engine_ready(home: Home) -> None:
    """F4, the false positive to avoid: a slow engine that keeps completing requests is busy, not
    stalled. Queued at one engine slot, requests wait longer than engine_stall_s, but a completion
    arrives every 0.5 s."""
    with (
        FakeEngine(content=CONTACT_OK, latency_s=0.5, concurrency=1) as fake,
        fake_gateway(home, fake, engine_stall_s=1.5, engine_check_s=0.1) as gw,
    ):

        def call(_: int) -> int:
            with gw.client() as own:
                return own.post("/v1/extract/contact", json={"text": "Ann buys."}).status_code

        readiness: list[int] = []
        with ThreadPoolExecutor(4) as pool, gw.client() as client:
            pending = [pool.submit(call, i) for i in range(8)]  # 4 s of work; each waits up to 2 s
            while not all(f.done() for f in pending):
                readiness.append(client.get("/readyz").status_code)
                time.sleep(0.1)
        assert [f.result() for f in pending] == [200] * 8
        assert set(readiness) == {200}
        assert gw.app.state.gateway.stalled_since is None


def test_f4_late_health_answers_keep_readiness_until_they_last_engine_stall_s(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    """F4, the other false positive: /health answering later than its timeout is "unknown", not down
    (on a 2-core machine a busy engine can starve vLLM's API process for seconds). Readiness holds and
    requests are served; only when no answer came for engine_stall_s is the gateway unready, logged with
    the reason; the first answer in time makes it ready again. (Before, one late answer made /readyz
    and every new request 503 until the next check: CI saw a 503 between two tests.)"""
    with (
        FakeEngine(content=CONTACT_OK) as fake,
        fake_gateway(home, fake, engine_stall_s=3.0, engine_check_s=0.1) as gw,
        gw.client() as client,
        caplog.at_level("INFO", logger="forma.serve"),
    ):
        state: GatewayState = gw.app.state.gateway
        state.engine.health_timeout_s = 0.3
        fake.knobs.health_delay_s = 1.0
        wait_for(lambda: state.unanswered_since is not None, within=5)
        readiness, served = [], []
        while time.monotonic() - state.unanswered_since < 2.5:
            readiness.append(client.get("/readyz").status_code)
            served.append(client.post("/v1/extract/contact", json={"text": "Ann buys."}).status_code)
        assert set(readiness) == set(served) == {200}
        assert wait_for(lambda: client.get("/readyz").status_code == 503, within=5) > 0
        assert time.monotonic() - state.unanswered_since >= 3.0
        refused = client.post("/v1/extract/contact", json={"text": "Ann buys."})
        assert refused.status_code == 503 and refused.headers["retry-after"]
        fake.knobs.health_delay_s = 0.0
        wait_for(lambda: client.get("/readyz").status_code == 200, within=5)
        assert state.unanswered_since is None
        fake.knobs.health_delay_s = 1.0  # late again: a new clock, not the old one's 3 s
        wait_for(lambda: state.unanswered_since is not None, within=5)
        assert client.get("/readyz").status_code == 200
    changes = [(r.getMessage(), r.fields["reason"]) for r in caplog.records if "ready" in r.getMessage()]  # type: ignore[attr-defined]
    assert changes[:2] == [("engine_unready", "no health answer for 3 s"), ("engine_ready", "health ok")]


def test_f2_a_drain_stays_a_drain_through_healthy_engine_checks(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    """F2: once draining, /readyz answers 503 "draining" and new requests 503 through every later
    supervision round of a healthy engine, while engine readiness (its gauge and log) keeps following
    the engine: no "engine_unready" at the drain undone by "engine_ready, health ok" a round later (CI's
    log once showed that flip in the middle of a drain)."""
    with (
        FakeEngine(content=CONTACT_OK) as fake,
        fake_gateway(home, fake, engine_check_s=0.1) as gw,
        gw.client() as client,
        caplog.at_level("INFO", logger="forma.serve"),
    ):
        state: GatewayState = gw.app.state.gateway
        wait_for(lambda: client.get("/readyz").status_code == 200, within=10)
        caplog.clear()
        state.begin_drain("SIGTERM")
        checks = fake.log.health_checks
        wait_for(lambda: fake.log.health_checks >= checks + 3, within=10)  # healthy rounds since
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["reason"] == "draining"
        refused = client.post("/v1/extract/contact", json={"text": "Ann buys."})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
        assert state.admission.engine_ready  # the engine itself is fine
        flips = [
            r.getMessage() for r in caplog.records if r.getMessage() in ("engine_ready", "engine_unready")
        ]
    assert flips == []


def test_f2_stop_signal_while_waiting_for_the_engine_gives_up_at_once(home: Home) -> None:
    """F2 (startup half): SIGTERM while the engine is still starting must not wait out
    engine_start_timeout_s (300 s). FakeEngine(healthy=False) stands for an engine that is not up yet."""

    async def scenario(state: GatewayState) -> float:
        starting = asyncio.create_task(state.start())
        await asyncio.sleep(0.5)
        assert not starting.done()
        stopped_at = time.monotonic()
        state.begin_drain("SIGTERM")
        with pytest.raises(EngineStartError, match="stopped while waiting"):
            await asyncio.wait_for(starting, timeout=10)
        await state.engine.aclose()
        return time.monotonic() - stopped_at

    with FakeEngine(healthy=False) as fake:
        state = GatewayState.build(settings(home, fake.url, engine_start_timeout_s=300), keys=[])
        assert asyncio.run(scenario(state)) < 10
        assert fake.log.health_checks >= 1


def test_f3_engine_reporting_dead_fails_pending_requests_at_once(home: Home) -> None:
    """F3 mechanism: requests wait at an engine whose /health turns 503 (vLLM's answer once its engine
    core died). The gateway fails them with 503 within a supervision round or two, not at their
    deadline (60 s), goes unready, and is ready again when the engine is."""
    with (
        FakeEngine(content=CONTACT_OK) as fake,
        fake_gateway(home, fake, engine_check_s=0.2) as gw,
        gw.client() as client,
    ):
        fake.knobs.hold = True

        def stuck(_: int) -> httpx.Response:
            with gw.client() as own:
                return own.post("/v1/extract/contact", json={"text": "Ann buys a bike."})

        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(stuck, i) for i in range(3)]
            wait_for(lambda: fake.log.in_flight == 3, within=10)
            fake.knobs.healthy = False
            died = time.monotonic()
            results = [f.result(timeout=30) for f in pending]
        assert time.monotonic() - died < 10  # the deadline is 60 s: this is the drop, not a timeout
        assert [r.status_code for r in results] == [503] * 3
        assert all(r.headers["retry-after"] for r in results)
        wait_for(lambda: fake.log.aborts == 3, within=5)  # their engine calls were closed
        assert client.get("/readyz").json()["reason"] == "engine not ready"
        fake.knobs.hold, fake.knobs.healthy = False, True
        wait_for(lambda: client.get("/readyz").status_code == 200, within=10)
        assert client.post("/v1/extract/contact", json={"text": "Ann buys."}).status_code == 200
