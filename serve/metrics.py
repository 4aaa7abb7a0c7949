"""Prometheus metrics, one registry per app (so tests can run several apps in one process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from serve.limits import Admission


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "forma_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "forma_request_latency_seconds",
            "Request latency by route.",
            ["route"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.tokens = Counter(
            "forma_tokens", "Tokens by kind (prompt, completion) and schema.", ["kind", "schema"], registry=r
        )
        self.in_flight = Gauge(
            "forma_in_flight_requests", "Requests admitted to the engine and not finished.", registry=r
        )
        self.queued = Gauge(
            "forma_queued_requests", "Requests waiting at the gateway for an engine slot.", registry=r
        )
        self.admitted_peak = Gauge(
            "forma_admitted_peak", "Most requests in flight + queued at once since start.", registry=r
        )
        self.queue_wait = Histogram(
            "forma_queue_wait_seconds",
            "Time admitted requests waited for an engine slot.",
            buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.adapter_loads = Counter(
            "forma_adapter_loads", "Adapter loads into the engine by outcome.", ["outcome"], registry=r
        )
        self.rejections = Counter("forma_rejections", "Requests refused, by reason.", ["reason"], registry=r)
        self.generation_failures = Counter(
            "forma_generation_failures", "Generations refused after decoding, by code.", ["code"], registry=r
        )
        self.engine_restarts = Counter(
            "forma_engine_restarts", "Times the child engine was restarted.", registry=r
        )
        self.engine_ready = Gauge(
            "forma_engine_ready", "1 when the engine answers its health check.", registry=r
        )
        self.dropped = Counter(
            "forma_dropped_requests",
            "Requests cancelled before their answer, by reason: client_closed (the client went away) "
            "or timeout (past the deadline). Their generation was aborted in the engine.",
            ["reason"],
            registry=r,
        )

    def follow(self, admission: Admission) -> None:
        """The admission gauges read the live counts at scrape time (never drift from inc/dec)."""
        self.in_flight.set_function(lambda: admission.running)
        self.queued.set_function(lambda: admission.waiting)
        self.admitted_peak.set_function(lambda: admission.peak)
