"""RELIABILITY E1-E3: bursts, sustained overload, body and header limits.

The gateway under load is the real `forma serve` process (`GatewayProcess`): its RSS is its own and it
does not share a GIL with the load generator, a minimal raw-socket client (httpx would spend more CPU
than the gateway). FakeEngine stands in for vLLM where the case prescribes an engine with a fixed
latency and concurrency (E1, E2: a CPU vLLM cannot be held at 200 ms per request at concurrency 8);
E1 also runs, smaller, against the real engine, and E3 runs against it. Time bounds are loose
multiples of what the mechanism guarantees (2 shared cores), each well below what a failure of the
property would produce; the mechanisms themselves (peaks, queue waits, engine calls) are asserted.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fake_engine import FakeEngine
from rel_http import GatewayProcess, raw_exchange, valid_reply
from serve_fixtures import ADMIN, Home, engine_state
from test_serve_support import TEXTS

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class Outcome:
    status: int | None  # None: a transport error (reset, refused, closed without an answer)
    latency_s: float
    sent_at: float = 0.0
    retry_after: str | None = None
    error: str | None = None


def _request(text: str) -> bytes:
    """One extraction as bytes on the wire: head and body in one write, the connection closed after."""
    body = json.dumps({"text": text}).encode()
    return (
        b"POST /v1/extract/invoice HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (ADMIN.encode(), len(body), body)
    )


async def _one(port: int, text: str, sent_at: float = 0.0) -> Outcome:
    """One request over a fresh connection with a minimal client: a few hundred microseconds of CPU,
    so the load generator measures the gateway rather than itself."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request(text))
        answer = await asyncio.wait_for(reader.read(), 120)
        writer.close()
    except (OSError, TimeoutError) as err:
        return Outcome(None, time.monotonic() - started, sent_at, error=type(err).__name__)
    elapsed = time.monotonic() - started
    if not answer.startswith(b"HTTP/1.1 "):
        return Outcome(None, elapsed, sent_at, error="closed without an answer")
    retry = re.search(rb"\r\nretry-after: (\S+)", answer, re.IGNORECASE)
    return Outcome(int(answer[9:12]), elapsed, sent_at, retry.group(1).decode() if retry else None)


async def _burst(port: int, count: int) -> list[Outcome]:
    """`count` requests at once, each on its own connection."""
    return await asyncio.gather(*(_one(port, TEXTS[i % len(TEXTS)]) for i in range(count)))


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def _wait_drained(gw: GatewayProcess, within_s: float) -> float:
    """Seconds until no request is queued or in flight at the gateway (fails after `within_s`)."""
    started = time.monotonic()
    while gw.metric("forma_queued_requests") or gw.metric("forma_in_flight_requests"):
        assert time.monotonic() - started < within_s, "the queue did not drain"
        time.sleep(0.1)
    return time.monotonic() - started


def _check_shed(outcomes: list[Outcome]) -> tuple[list[Outcome], list[Outcome]]:
    """Every request got an answer: 200, or 429 with a Retry-After; no 5xx, no reset. (admitted, shed)"""
    assert [o.error for o in outcomes if o.error] == []
    assert {o.status for o in outcomes} <= {200, 429}, sorted({o.status for o in outcomes if o.status})
    shed = [o for o in outcomes if o.status == 429]
    assert all(o.retry_after and int(o.retry_after) >= 1 for o in shed)
    return [o for o in outcomes if o.status == 200], shed


def _quantile_from_buckets(buckets: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding the q-quantile of a cumulative Prometheus histogram."""
    total = buckets[math.inf]
    return next(le for le, count in sorted(buckets.items()) if count >= q * total)


def test_e1_burst_of_200_is_bounded_shed_fast_and_drains(home: Home, tmp_path: Path) -> None:
    """E1: 200 concurrent extractions against FakeEngine (200 ms, concurrency 8) behind a gateway with
    8 in flight and a queue of 32: never more than 40 admitted at once (the engine never sees more
    than 8), the rest 429 + Retry-After without queueing or reaching the engine, no 5xx or reset,
    admitted p99 bounded by the queue (an unbounded one: 200/8 x 0.2 s = 5 s), and within 5 s the
    queue is empty and RSS back within 10% of its warmed-up baseline."""
    args = ["--max-in-flight", "8", "--max-queue", "32"]
    with (
        FakeEngine(latency_s=0.2, concurrency=8, reply=valid_reply) as fake,
        GatewayProcess(home, tmp_path, fake.url, args, {}) as gw,
    ):
        asyncio.run(_burst(gw.port, 200))  # warm-up: lazy imports, pools and allocator arenas
        _wait_drained(gw, 10)
        baseline, calls = gw.rss_mb(), fake.chat_calls
        outcomes = asyncio.run(_burst(gw.port, 200))
        admitted, shed = _check_shed(outcomes)
        assert len(admitted) >= 40 and len(shed) >= 100, (len(admitted), len(shed))
        assert fake.chat_calls - calls == len(admitted)  # a shed request never reached the engine
        assert fake.log.max_open <= 8  # the engine saw at most --max-in-flight at once
        assert 9 <= gw.metric("forma_admitted_peak") <= 40  # the queue was used, and bounded
        queued = gw.histogram("forma_queue_wait_seconds")
        assert queued[math.inf] == fake.chat_calls  # only admitted requests ever waited in the queue
        assert _quantile_from_buckets(queued, 0.99) <= 2  # 32 queued / 8 slots x 0.2 s = 0.8 s
        admitted_p99, shed_p99 = p99([o.latency_s for o in admitted]), p99([o.latency_s for o in shed])
        assert admitted_p99 < 2.6, admitted_p99  # RELIABILITY: 1.3 s (ceil(40/8) x 0.2 s x 1.3); x2 here
        # Shed at the door: within the time the gateway takes to read the burst, no wait for the engine.
        assert shed_p99 < min(1.0, admitted_p99), (shed_p99, admitted_p99)
        assert _wait_drained(gw, 5) < 5
        deadline = time.monotonic() + 5
        while gw.rss_mb() > baseline * 1.1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gw.rss_mb() <= baseline * 1.1, (baseline, gw.rss_mb())


def test_e1_burst_of_60_against_the_real_engine(gateway, engine_url: str) -> None:
    """E1 on the real vLLM engine: 60 concurrent extractions, 8 in flight and 8 queued: the rest get
    429 + Retry-After, nothing else; afterwards the gateway and the engine are idle again."""
    gw = gateway(max_in_flight=8, max_queue=8)
    outcomes = asyncio.run(_burst(int(gw.url.rsplit(":", 1)[1]), 60))
    admitted, shed = _check_shed(outcomes)
    assert len(admitted) >= 8 and len(shed) >= 20, (len(admitted), len(shed))
    admission = gw.app.state.gateway.admission
    assert admission.peak <= 16 and admission.count == 0
    deadline = time.monotonic() + 10
    while engine_state(engine_url)[0] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert engine_state(engine_url)[0] == 0  # nothing left running in the engine


async def _closed_loop(port: int, workers: int, seconds: float) -> float:
    """Completed requests per second with `workers` clients each sending back to back."""
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            if (await _one(port, TEXTS[0])).status == 200:
                done += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return done / seconds


async def _open_loop(port: int, rate: float, seconds: float) -> list[Outcome]:
    """Requests sent at `rate` per second whatever the answers do (open loop), for `seconds`."""
    start, tasks = time.monotonic(), []
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        sent_at = time.monotonic() - start
        tasks.append(asyncio.create_task(_one(port, TEXTS[i % len(TEXTS)], sent_at)))
    return await asyncio.gather(*tasks)


def test_e2_sustained_overload_keeps_goodput_and_sheds_the_surplus(home: Home, tmp_path: Path) -> None:
    """E2: capacity is measured closed-loop, then an open loop offers 1.2x that for 25 s (FakeEngine:
    200 ms, concurrency 8; gateway 8 in flight + 16 queued). After the first 5 s (the queue filling),
    goodput holds in every 5 s window, the surplus is shed with 429, there is no 5xx or reset,
    admitted latency does not climb from the second window to the last, and the gateway's queue-wait
    p95 stays within 1.5 s."""
    args = ["--max-in-flight", "8", "--max-queue", "16"]
    with (
        FakeEngine(latency_s=0.2, concurrency=8, reply=valid_reply) as fake,
        GatewayProcess(home, tmp_path, fake.url, args, {}) as gw,
    ):
        capacity = asyncio.run(_closed_loop(gw.port, workers=24, seconds=4))
        assert capacity > 10, capacity  # sanity: ~40/s on a quiet machine
        seconds, rate = 25.0, 1.2 * capacity
        outcomes = asyncio.run(_open_loop(gw.port, rate, seconds))
        admitted, shed = _check_shed(outcomes)
        offered = len(outcomes) / max(o.sent_at for o in outcomes)
        assert offered > 1.05 * capacity, (offered, capacity)  # the load generator kept up: real overload
        assert len(shed) > 0.03 * len(outcomes), (len(shed), len(outcomes))
        # Five 5 s windows; the first is the ramp (the queue fills), the others are the steady state.
        finished = [[o for o in admitted if w * 5 <= o.sent_at + o.latency_s < (w + 1) * 5] for w in range(5)]
        goodput = [len(w) / 5 for w in finished[1:]]
        assert min(goodput) > 0.5 * capacity, (goodput, capacity)  # never collapses
        assert sum(goodput) / len(goodput) > 0.8 * capacity, (goodput, capacity)  # and holds
        sent = [sorted(o.latency_s for o in admitted if w * 5 <= o.sent_at < (w + 1) * 5) for w in (1, 4)]
        first, last = (w[int(0.95 * len(w))] for w in sent)
        assert last < max(1.5 * first, first + 0.3), (first, last)  # latency does not climb
        assert _quantile_from_buckets(gw.histogram("forma_queue_wait_seconds"), 0.95) <= 1.5
        assert fake.log.max_open <= 8
        _wait_drained(gw, 5)


@dataclass
class RssPeak:
    """The highest RSS of a process, sampled every 20 ms while the `with` block runs."""

    gw: GatewayProcess
    peak_mb: float = 0.0

    def __enter__(self) -> RssPeak:
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak_mb = max(self.peak_mb, self.gw.rss_mb())
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


def _head(extra: bytes = b"", length: int | None = None) -> bytes:
    framing = b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
    return (
        b"POST /v1/extract/invoice HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN.encode() + b"\r\n"
        b"Content-Type: application/json\r\n" + framing + extra + b"\r\n"
    )


def test_e3_body_and_header_limits_hold_without_memory_growth(
    home: Home, engine_url: str, tmp_path: Path
) -> None:
    """E3 (real engine behind `forma serve`): a 50 MB body, declared or chunked, is 413 before any
    JSON parsing with the gateway's RSS up by < 20 MB; a 1 MB header and 10k header lines are 431 and
    the connection closes; a body dripped at 2 bytes/s is cut at the body deadline (408) and a head
    dripped likewise is closed at the header deadline, while the gateway keeps answering others."""
    env = {"FORMA_SERVE_BODY_TIMEOUT_S": "2", "FORMA_SERVE_HEADER_TIMEOUT_S": "2"}
    with GatewayProcess(home, tmp_path, engine_url, [], env) as gw:
        port = gw.port
        warm = httpx.post(
            gw.url + "/v1/extract/invoice", json={"text": "x" * 900_000}, headers=AUTH, timeout=30
        )
        assert warm.status_code == 413  # the text limit, after parsing a body just under the body limit
        baseline = gw.rss_mb()
        big = b'{"text": "' + b"x" * 50_000_000 + b'"}'
        chunked = b"".join(
            b"%x\r\n%s\r\n" % (len(c), c) for c in (big[i : i + 2**20] for i in range(0, len(big), 2**20))
        )
        with RssPeak(gw) as peak:
            declared = raw_exchange(port, _head(length=len(big)), big)
            streamed = raw_exchange(port, _head(), chunked + b"0\r\n\r\n")
        for reply in (declared, streamed):
            assert reply.status == 413 and b'"too_large"' in reply.body, reply
        assert peak.peak_mb - baseline < 20, (baseline, peak.peak_mb)

        long_header = raw_exchange(port, _head(b"X-Big: " + b"a" * 2**20 + b"\r\n", length=2))
        many_lines = raw_exchange(port, _head(b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)), length=2))
        for reply in (long_header, many_lines):
            assert reply.status == 431 and reply.headers["connection"] == "close", reply

        drip_body = raw_exchange(port, _head(length=40), b'{"text": "' + b"x" * 30, drip_s=0.5)
        assert drip_body.status == 408 and drip_body.elapsed_s < 6, drip_body
        drip_head = raw_exchange(
            port, b"POST /v1/extract/invoice HTTP/1.1\r\n", b"Host: x\r\n" * 10, drip_s=0.5
        )
        assert drip_head.status is None and drip_head.elapsed_s < 6, drip_head  # closed, no answer
        assert httpx.get(gw.url + "/healthz", timeout=5).status_code == 200
        assert gw.rss_mb() - baseline < 20
