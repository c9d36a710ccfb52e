"""Prometheus metrics of the HTTP API: requests by route and status, latency, served version.

With one worker the numbers are this process's. With several workers (``p4r serve --workers
N``) the CLI switches prometheus-client to its multiprocess mode before any worker starts, so
a scrape of any worker returns the sum over all workers for counters and histograms, and one
``p4r_served_version`` sample per live worker (label ``pid``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Sub-millisecond buckets: a warm rerank answers in well under a millisecond.
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)


disable_created_metrics()  # the *_created series only add noise to every scrape


def multiprocess_mode() -> bool:
    """Whether prometheus-client writes values to files shared by worker processes."""
    return values.ValueClass is not values.MutexValue


class Metrics:
    """The metrics one app records, in a registry of its own (apps in one process never clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("p4r_http_requests", "HTTP requests answered, by route and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("p4r_http_request_duration_seconds",
                                 "Time from request start to the last response byte, by route.",
                                 ["method", "route"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.version = Gauge("p4r_served_version",
                             "Index version this worker answers from (-1: not ready).",
                             registry=self.registry, multiprocess_mode="liveall")
        self.reloads = Counter("p4r_reloads", "Reload checks, by outcome (switched, unchanged, "
                               "error).", ["outcome"], registry=self.registry)
        self.version.set(-1)

    def close(self) -> None:
        """A stopping worker drops its live-only samples (its served version) from the files."""
        if multiprocess_mode():
            mark_process_dead(os.getpid())

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if multiprocess_mode():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request, labelled by its route template.

    The template (``/v1/items/{item_id}/personas``), not the raw path, keeps label cardinality
    bounded; paths that match no route are counted as ``unmatched``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_label(scope)
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)


def _route_label(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else "unmatched"
