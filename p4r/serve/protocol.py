"""uvicorn's httptools protocol with the limits it lacks: head and body timeouts, a head size
limit and a connection cap.

uvicorn arms its keep-alive timer only after a response, so a client that opens a connection
and never finishes its request head holds the connection (and a file descriptor) forever; and
httptools accumulates a head of any size. :class:`GuardedProtocol` closes a connection whose
head is not complete within ``header_timeout`` (408), whose head passes ``max_header_bytes``
(431), or whose body is not complete within ``body_timeout`` (408); beyond
``max_connections`` open connections a new one is answered 503 and closed at once, so a flood
of idle connections cannot exhaust the process's descriptors. The timers cost one
``call_later`` per request.

``p4r serve`` passes it to uvicorn as ``http=`` (an import string, so ``--workers`` processes
load it too); limits come from ``P4R_SERVE__*`` settings, read once per process.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from p4r.serve.errors import simple_body
from p4r.settings import ServeSettings, load_settings

PROTOCOL = "p4r.serve.protocol:GuardedProtocol"


@dataclass(frozen=True)
class ConnectionLimits:
    """The connection-level limits (``P4R_SERVE__*``)."""

    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_connections: int

    @classmethod
    def of(cls, serve: ServeSettings) -> ConnectionLimits:
        """The limits of ``serve`` settings."""
        return cls(serve.header_timeout, serve.body_timeout, serve.max_header_bytes,
                   serve.max_connections)


_limits: ConnectionLimits | None = None


def connection_limits() -> ConnectionLimits:
    """This process's limits, read from the settings once."""
    global _limits
    if _limits is None:
        _limits = ConnectionLimits.of(load_settings().serve)
    return _limits


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}


def raw_error(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 error answer that closes the connection."""
    payload = json.dumps(simple_body(code, message)).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, _REASONS[status], len(payload))) + payload


class Arrivals:
    """Requests this process has read the head of and whose task has not yet entered the app.

    :class:`GuardedProtocol` counts them as it starts their tasks, and again as each task
    enters the app. A task started while the loop handles one batch of socket events runs
    before the loop polls the sockets again, so a request that finds none waiting cannot be
    joined by another before it is answered: the coalescer (:class:`p4r.serve.lean.Coalescer`)
    then answers it at once instead of yielding a turn for others to join. Under another
    server nothing is counted (``counting`` stays false) and the coalescer always yields.
    """

    def __init__(self) -> None:
        self.counting = False
        self.waiting = 0

    def started(self) -> None:
        """A request's task was created (it will call the app)."""
        self.counting = True
        self.waiting += 1

    def entered(self) -> None:
        """A request's task called the app."""
        if self.counting and self.waiting > 0:
            self.waiting -= 1

    def alone(self) -> bool:
        """Whether no other request can join one being answered now."""
        return self.counting and self.waiting == 0


ARRIVALS = Arrivals()


class _Entering:
    """An ASGI app that notes each request's task entering it (:data:`ARRIVALS`)."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        ARRIVALS.entered()
        await self.app(scope, receive, send)


class GuardedProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with head/body timeouts, a head size limit and a connection
    cap (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = connection_limits()
        self._entering = _Entering(self.app)
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._head_bytes = 0

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._close_with(503, "unavailable", "too many open connections "
                             f"(P4R_SERVE__MAX_CONNECTIONS={self.limits.max_connections}); "
                             "retry shortly")
            return
        self._begin_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        started_in_head = self._in_head
        super().data_received(data)
        # Bytes of a head that spans reads (one read holds at most the transport's buffer):
        # what httptools would otherwise accumulate without bound.
        if started_in_head and self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._close_with(431, "headers_too_large", "the request head is over "
                                 f"{self.limits.max_header_bytes:,} bytes "
                                 "(P4R_SERVE__MAX_HEADER_BYTES)")

    # -- parser callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # a next request on a kept-alive connection
            self._begin_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.limits.body_timeout, self._body_timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel()
        super().on_message_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """Every task uvicorn starts for a request (uvicorn 0.45 and later call this)."""
        if app is self.app:  # not uvicorn's own 503 answer (a concurrency limit)
            ARRIVALS.started()
            app = self._entering
        super()._start_asgi_task(cycle, app)

    # -- timers ------------------------------------------------------------------------------
    def _begin_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def _arm(self, seconds: float, callback: Any) -> None:
        self._cancel()
        self._timer = self.loop.call_later(seconds, callback)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._in_head:
            self._close_with(408, "request_timeout", "the request head did not arrive within "
                             f"{self.limits.header_timeout:g} s (P4R_SERVE__HEADER_TIMEOUT)")

    def _body_timed_out(self) -> None:
        self._timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self._close_with(408, "request_timeout", "the request body did not arrive within "
                             f"{self.limits.body_timeout:g} s (P4R_SERVE__BODY_TIMEOUT)")
        elif cycle is not None and cycle.more_body:
            self.transport.close()

    def _close_with(self, status: int, code: str, message: str) -> None:
        self._in_head = False
        self._cancel()
        if not self.transport.is_closing():
            self.transport.write(raw_error(status, code, message))
            self.transport.close()
