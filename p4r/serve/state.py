"""What one serving process holds: its reranker, a helper thread, and the reload loop.

Requests that only read the index (rerank by ``user_id`` or ``vector``, profiles, personas)
run on the event loop thread itself: the engine holds the GIL for a whole query, so a thread
hop would add two wake-ups per request (a third of a millisecond on a busy 2-core machine)
and answer nothing faster. Work that takes long or blocks (loading and refreshing a version,
requests with a raw history and new interactions, which run the encoder, and listings for the
explorer) runs on one helper thread, so the loop keeps answering meanwhile. The reranker is
built for that split: a refresh swaps one reference, a request reads it once, and its caches
take a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from p4r.errors import P4RError
from p4r.query import Reranker, open_reranker
from p4r.serve.errors import NotReadyError
from p4r.serve.metrics import Metrics
from p4r.settings import Settings

log = logging.getLogger("p4r.serve")
T = TypeVar("T")


class ServeState:
    """The served dataset of one process: ready once a version is loaded, reloaded in the
    background every ``settings.serve.reload_interval`` seconds.

    Args:
        settings: p4r settings (backend, encoder, query, serve).
        dataset: dataset name to serve.
        metrics: where the served version and reload outcomes are recorded.
        opener: builds the reranker (default :func:`open_reranker`); tests pass their own.
    """

    def __init__(self, settings: Settings, dataset: str, metrics: Metrics,
                 opener: Callable[[Settings, str], Reranker] = open_reranker) -> None:
        self.settings = settings
        self.dataset = dataset
        self.metrics = metrics
        self.opener = opener
        self.reranker: Reranker | None = None
        self.error: str | None = "not loaded yet"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="p4r-serve")
        self._task: asyncio.Task[None] | None = None

    # -- calls ---------------------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the helper thread and wait for it without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def require(self) -> Reranker:
        """The served reranker, or NotReadyError saying why there is none."""
        if self.reranker is None:
            raise NotReadyError(self.error or f"dataset {self.dataset!r} is not loaded")
        return self.reranker

    @property
    def version(self) -> int | None:
        """Version number being served (None when not ready)."""
        reranker = self.reranker
        return reranker.version if reranker is not None else None

    # -- loading and reloading -----------------------------------------------------------------
    def load_or_refresh(self) -> str:
        """Load the dataset, or switch to a newly published version (on the helper thread).

        Returns ``"switched"`` or ``"unchanged"``; on a failure the served version (if any) is
        kept and ``"error"`` returned, with the reason logged and kept for ``/readyz``.
        """
        try:
            if self.reranker is None:
                self.reranker = self.opener(self.settings, self.dataset)
                outcome = "switched"
            else:
                outcome = "switched" if self.reranker.refresh() else "unchanged"
            self.error = None
        except P4RError as exc:
            outcome, self.error = "error", str(exc)
            log.warning("p4r serve: %s", exc)
        except Exception as exc:  # an engine failure must not end the reload loop
            outcome, self.error = "error", f"{type(exc).__name__}: {exc}"
            log.exception("p4r serve: reload failed")
        if outcome == "switched":
            log.info("p4r serve: serving %s version %s", self.dataset, self.version)
        self.metrics.reloads.labels(outcome).inc()
        self.metrics.version.set(self.version if self.version is not None else -1)
        return outcome

    async def start(self) -> None:
        """Load once before accepting requests, then keep reloading in the background."""
        await self.run(self.load_or_refresh)
        self._task = asyncio.create_task(self._reload_loop(), name="p4r-reload")

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.serve.reload_interval)
            await self.run(self.load_or_refresh)

    async def stop(self) -> None:
        """Stop reloading, let the helper thread finish, release the store."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self.reranker is not None:
            self.reranker.backend.close()
            self.reranker = None
            self.error = "stopped"
