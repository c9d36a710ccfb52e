"""Prometheus metrics of the HTTP API: requests by route and status, latency, served version.

With one worker the numbers are this process's. With several workers (``p4r serve --workers
N``) the CLI switches prometheus-client to its multiprocess mode before any worker starts, so
a scrape of any worker returns the sum over all workers for counters and histograms, and one
``p4r_served_version`` sample per live worker (label ``pid``).

With one worker the registry also holds prometheus-client's process, platform and GC
collectors (``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
``process_open_fds``, ``python_gc_*``, ...). In multiprocess mode they are left out: they
would describe whichever worker answered the scrape, and jump between scrapes.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.routing import BaseRoute, Match
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
        self.coalesced = Counter("p4r_rerank_coalesced", "Single reranks answered in a group "
                                 "with others that arrived together (p4r.serve.lean).",
                                 registry=self.registry)
        self.version.set(-1)
        # (method, route, status) → its counter and histogram children: ``labels()`` costs
        # ~2.5 µs a request (arguments, a lock, a lookup); a cached child, ~1 µs for both.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        if not multiprocess_mode():
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:  # label sets are bounded: route templates, methods, statuses
            children = self._children[key] = (self.requests.labels(method, route, str(status)),
                                              self.latency.labels(method, route))
        children[0].inc()
        children[1].observe(seconds)

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
    bounded; paths that match no route are counted as ``unmatched``. A request refused before
    routing (a missing key, a body too large) is labelled by matching ``routes`` then, so
    every route's refusals are counted under its own label.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics,
                 routes: list[BaseRoute] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes if routes is not None else []

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
            self.metrics.observe(scope.get("method", ""), _route_label(scope, self.routes),
                                 status, time.perf_counter() - start)


def leaf_routes(routes: list[BaseRoute]) -> list[BaseRoute]:
    """The routes themselves: FastAPI keeps an included router as one entry holding its own
    (``original_router``); p4r includes routers without a prefix, so their paths are whole."""
    out: list[BaseRoute] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        out.extend(leaf_routes(list(inner.routes)) if inner is not None else [route])
    return out


def _route_label(scope: dict[str, Any], routes: list[BaseRoute]) -> str:
    route = scope.get("route")
    if route is None:  # refused before routing: find it now (only on that path)
        route = next((r for r in leaf_routes(routes) if r.matches(scope)[0] is Match.FULL),
                     None)
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else "unmatched"
