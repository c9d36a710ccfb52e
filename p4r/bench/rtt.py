"""A network round trip in front of an in-process Qdrant engine, for benchmarks and tests.

No Qdrant server can run on these machines, so the server backend's serving path is measured
against ``QdrantClient(":memory:")`` with a fixed delay before each call: ``time.sleep`` in the
synchronous client (it blocks the caller's thread, as a blocking socket read does) and
``asyncio.sleep`` in the async one (the event loop serves other requests meanwhile, as it does
while an ``AsyncQdrantClient`` awaits a reply). The engine work itself is the real local
engine's; only the wire is simulated, and the figures say so.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from qdrant_client import QdrantClient

# The calls the serving path makes (reads); everything else passes through without delay.
_READS = frozenset({"query_batch_points", "retrieve", "facet", "count", "scroll", "get_aliases",
                    "get_collection", "collection_exists"})


class Answers:
    """Replies remembered by request, so a benchmark charges the engine's work once (the
    local engine is pure Python; a real server computes on its own machine)."""

    def __init__(self) -> None:
        self._replies: dict[str, Any] = {}

    def get(self, name: str, fn: Any, args: Any, kwargs: Any) -> Any:
        key = f"{name}|{args!r}|{sorted(kwargs.items())!r}"
        if key not in self._replies:
            self._replies[key] = fn(*args, **kwargs)
        return self._replies[key]


class DelayedClient:
    """``QdrantClient`` with ``rtt`` seconds of blocking wait before each read (its replies
    remembered in ``answers`` when given)."""

    def __init__(self, client: QdrantClient, rtt: float, answers: Answers | None = None) -> None:
        self._client = client
        self.rtt = rtt
        self.calls = 0
        self._answers = answers

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in _READS or not callable(attr):
            return attr

        def delayed(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            time.sleep(self.rtt)
            if self._answers is not None:
                return self._answers.get(name, attr, args, kwargs)
            return attr(*args, **kwargs)

        return delayed


class DelayedAsyncClient:
    """The async twin of :class:`DelayedClient` over the same in-process engine: it awaits
    ``rtt`` seconds, then answers from the shared synchronous client."""

    def __init__(self, client: QdrantClient, rtt: float, answers: Answers | None = None) -> None:
        self._client = client
        self.rtt = rtt
        self.calls = 0
        self._answers = answers

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        async def delayed(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            await asyncio.sleep(self.rtt)
            if self._answers is not None and name in _READS:
                return self._answers.get(name, attr, args, kwargs)
            return attr(*args, **kwargs)

        return delayed

    async def close(self) -> None:
        """Nothing to close: the engine belongs to the synchronous client."""
