"""What one serving process holds: the served reranker, its work lanes, and the reload loop.

**Threads.** Requests that only read the index (rerank by ``user_id`` or ``vector``, profiles,
personas) run on the event loop thread itself: the engine holds the GIL for a whole query, so
a thread hop would add two wake-ups per request and answer nothing faster. Everything else
runs in a *lane*, one worker thread behind a bounded queue, so no kind of work waits behind
another:

* ``history``: rerank requests with a raw history (they run the encoder);
* ``writes``: new interactions and forgetting a user (the encoder, then a durable write);
* ``browse``: the explorer's listings (bounded scans);
* ``reload``: loading, switching and closing versions.

A full lane answers 429 at once (:class:`~p4r.serve.errors.BusyError`) instead of queueing
without bound: a client sending slow history requests cannot delay interactions or
``user_id`` reranks.

**Versions.** Every ``reload_interval`` seconds (or at once when a request finds the served
version gone) the reload lane compares the dataset's alias with the served version. A new
version is opened with the opener (a reranker on its own backend) and swapped in with one
reference; the old one is closed once no request uses it (a count of the requests holding
it), so a server lets go of the files of versions it left and ``prune`` frees their space.
After ``p4r index drop`` the server stops serving (503 ``not_indexed``, and ``/readyz``
says so) instead of answering from a dataset that no longer exists; a version removed under
the server (``prune``) is left for the live one, or answered 503 ``version_gone``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from p4r.errors import (
    NotFoundError,
    NotIndexedError,
    P4RError,
    UnknownUserError,
    public_message,
)
from p4r.query import Reranker, open_reranker
from p4r.serve.errors import (
    BusyError,
    NotReadyError,
    ServeError,
    VersionGoneError,
    error_body,
    status_and_code,
)
from p4r.serve.metrics import Metrics
from p4r.settings import Settings
from p4r.store import catalog
from p4r.store.naming import alias_name

log = logging.getLogger("p4r.serve")
T = TypeVar("T")


class Lane:
    """One worker thread behind a queue of at most ``capacity`` jobs (waiting or running).

    ``submit`` and the bookkeeping run on the event loop thread; a job's end is reported
    back to it, so the count is exact even when the request that waited is gone.
    """

    def __init__(self, name: str, capacity: int | None = None) -> None:
        self.name = name
        self.capacity = capacity
        self.pending = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"p4r-{name}")

    def submit(self, fn: Callable[..., T], *args: Any,
               on_done: Callable[[], None] | None = None) -> asyncio.Future[T]:
        """Queue ``fn(*args)``; BusyError when the lane is full. ``on_done`` runs on the loop
        when the job has finished (not when its waiter gave up)."""
        if self.capacity is not None and self.pending >= self.capacity:
            raise BusyError(f"the server is busy with {self.name} work ({self.pending} "
                            f"request(s) queued); retry shortly", headers={"retry-after": "1"})
        loop = asyncio.get_running_loop()
        self.pending += 1
        job: Future[T] = self._executor.submit(fn, *args)

        def finished() -> None:
            self.pending -= 1
            if on_done is not None:
                on_done()

        def report(_: Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is counting
                loop.call_soon_threadsafe(finished)

        job.add_done_callback(report)
        return asyncio.wrap_future(job, loop=loop)

    def shutdown(self) -> None:
        """Drop queued jobs, wait for the running one."""
        self._executor.shutdown(wait=True, cancel_futures=True)


class Served:
    """A reranker being served, and how many requests hold it now."""

    __slots__ = ("holders", "reranker", "retired")

    def __init__(self, reranker: Reranker) -> None:
        self.reranker = reranker
        self.holders = 0
        self.retired = False


class ServeState:
    """The served dataset of one process: ready once a version is loaded, reloaded in the
    background every ``settings.serve.reload_interval`` seconds (module doc).

    Args:
        settings: p4r settings (backend, encoder, query, serve).
        dataset: dataset name to serve.
        metrics: where the served version and reload outcomes are recorded.
        opener: builds a reranker of the live version (default :func:`open_reranker`, a new
            backend each time, so closing the old one releases its files); tests pass their
            own.
    """

    def __init__(self, settings: Settings, dataset: str, metrics: Metrics,
                 opener: Callable[[Settings, str], Reranker] = open_reranker) -> None:
        self.settings = settings
        self.dataset = dataset
        self.metrics = metrics
        self.opener = opener
        self.current: Served | None = None
        self.error: str | None = "not loaded yet"
        self.error_code: str = "unavailable"
        # Hosts a public message must not name: the configured Qdrant URL's.
        self.hide = [settings.qdrant.url]
        serve = settings.serve
        self.history = Lane("history", serve.history_queue)
        self.writes = Lane("writes", serve.write_queue)
        self.browse = Lane("browse", 4)
        self.reloads = Lane("reload")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Future[None]] = set()

    # -- calls ---------------------------------------------------------------------------------
    @property
    def reranker(self) -> Reranker | None:
        """The reranker served now (None when not ready)."""
        current = self.current
        return current.reranker if current is not None else None

    @property
    def version(self) -> int | None:
        """Version number being served (None when not ready)."""
        current = self.current
        return current.reranker.version if current is not None else None

    def require(self) -> Reranker:
        """The served reranker, or NotReadyError saying why there is none. For work that
        ends before the next ``await`` (nothing can close it meanwhile)."""
        current = self.current
        if current is None:
            raise NotReadyError(self.error or f"dataset {self.dataset!r} is not loaded",
                                self.error_code)
        return current.reranker

    async def call(self, lane: Lane, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(reranker, *args)`` in ``lane``, holding the served reranker until the
        job ends (a version switch meanwhile closes it only after that)."""
        self.require()
        current = self.current
        assert current is not None
        current.holders += 1
        try:
            future = lane.submit(fn, current.reranker, *args,
                                 on_done=lambda: self._let_go(current))
        except BaseException:
            self._let_go(current)
            raise
        return await future

    async def hold(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Await ``fn(reranker, *args)`` (a coroutine function) on the loop, holding the
        served reranker until it returns."""
        self.require()
        current = self.current
        assert current is not None
        current.holders += 1
        try:
            return await fn(current.reranker, *args)
        finally:
            self._let_go(current)

    def _let_go(self, served: Served) -> None:
        served.holders -= 1
        if served.retired and served.holders == 0:
            self._close_later(served)

    def wake(self) -> None:
        """Check the dataset's aliases now instead of at the next interval."""
        self._wake.set()

    def serves_collection_in(self, text: str) -> bool:
        """Whether an error text names a collection of the served dataset (it was removed)."""
        return "collection" in text.lower() and f"p4r_{self.dataset}_" in text

    def error_answer(self, exc: Exception) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        """The status, JSON body and extra headers answering a request that failed with
        ``exc``; one rule for the framework's routes and the lean ones.

        A p4r error answers its class's status (:mod:`p4r.serve.errors`); a missing collection
        of the served version means it was removed under this process (``version_gone``, and
        the reload runs now); a dataset no longer indexed wakes the reload too. Anything else
        is a bug: 500 ``internal``, logged with its traceback, its text kept out of the body.
        """
        if not isinstance(exc, P4RError):
            log.error("p4r serve: unexpected error", exc_info=exc)
            status, body = error_body(exc, hide=self.hide)
            return status, body, None
        if isinstance(exc, NotFoundError) and not isinstance(
                exc, UnknownUserError | NotIndexedError) and self.serves_collection_in(str(exc)):
            self.wake()
            exc = VersionGoneError(f"the served version of {self.dataset!r} was removed; this "
                                   "server moves to the live version within seconds, retry")
        elif isinstance(exc, NotIndexedError):
            self.wake()
        status, body = error_body(exc, hide=self.hide)
        if status >= 500 and not isinstance(exc, ServeError):  # not-ready shows in /readyz
            log.warning("p4r serve: %s answered %d: %s", type(exc).__name__, status, exc)
        return status, body, exc.headers if isinstance(exc, ServeError) else None

    # -- loading and reloading -----------------------------------------------------------------
    def check(self, reranker: Reranker | None) -> tuple[str, Reranker | None, BaseException |
                                                         None]:
        """In the reload lane: ``("switched", new reranker)``, ``("unchanged", None)``,
        ``("gone", None, why)`` (nothing to serve any more) or ``("error", None, why)``
        (keep serving what is served)."""
        try:
            if reranker is None:
                return "switched", self.opener(self.settings, self.dataset), None
            target = reranker.backend.get_aliases().get(alias_name(self.dataset, "personas"))
            if target == reranker.personas:
                return "unchanged", None, None
            if target is None:
                catalog.live_collection(reranker.backend, self.dataset)  # raises: dropped
            try:
                return "switched", self.opener(self.settings, self.dataset), None
            except NotIndexedError as exc:
                return "gone", None, exc
            except P4RError as exc:
                if reranker.backend.collection_exists(reranker.personas):
                    raise
                return "gone", None, VersionGoneError(
                    f"version {reranker.version} of {self.dataset!r} was removed and the live "
                    f"version cannot be served: {exc}")
        except NotIndexedError as exc:
            return ("gone" if reranker is not None else "error"), None, exc
        except P4RError as exc:
            return "error", None, exc
        except Exception as exc:  # an engine failure must not end the reload loop
            log.exception("p4r serve: reload failed")
            return "error", None, exc

    async def reload(self) -> str:
        """One reload check; returns ``switched``, ``unchanged``, ``gone`` or ``error``. On
        ``error`` the served version (if any) stays, and the reason shows in ``/readyz``."""
        served = self.reranker
        outcome, fresh, problem = await self.reloads.submit(self.check, served)
        if outcome == "switched" and fresh is not None:
            self._swap(fresh)
            self.error = None
            log.info("p4r serve: serving %s version %s", self.dataset, self.version)
        elif outcome == "unchanged":
            self.error = None
        else:
            assert problem is not None
            previous, self.error = self.error, public_message(problem, hide=self.hide)
            self.error_code = status_and_code(problem)[1]
            if outcome == "gone":
                self._swap(None)
                log.warning("p4r serve: stopped serving %s: %s", self.dataset, problem)
            elif self.error != previous:  # once per distinct reason, not every interval
                log.warning("p4r serve: %s", problem)
        self.metrics.reloads.labels(outcome).inc()
        self.metrics.version.set(self.version if self.version is not None else -1)
        return outcome

    def _swap(self, reranker: Reranker | None) -> None:
        old = self.current
        self.current = Served(reranker) if reranker is not None else None
        if old is not None:
            old.retired = True
            if old.holders == 0:
                self._close_later(old)

    def _close_later(self, served: Served) -> None:
        """Close a retired reranker's store in the reload lane (unless the reranker served
        now shares it, as when a test's opener reuses one backend)."""
        current = self.reranker
        if current is not None and current.backend is served.reranker.backend:
            return
        try:
            future = self.reloads.submit(close_quietly, served.reranker)
        except RuntimeError:  # the lane is shut down: the process is stopping
            close_quietly(served.reranker)
            return
        self._closing.add(future)
        future.add_done_callback(self._closing.discard)

    async def start(self) -> None:
        """Load once before accepting requests, then keep reloading in the background."""
        await self.reload()
        self._task = asyncio.create_task(self._reload_loop(), name="p4r-reload")

    async def _reload_loop(self) -> None:
        interval = self.settings.serve.reload_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.reload()

    async def stop(self) -> None:
        """Stop reloading, let running jobs end, close every store; never raises (a
        shutdown must end cleanly)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for lane in (self.history, self.writes, self.browse):
            await asyncio.to_thread(lane.shutdown)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        current, self.current = self.current, None
        self.error, self.error_code = "stopped", "unavailable"
        if current is not None:
            await self.reloads.submit(close_quietly, current.reranker)
        await asyncio.to_thread(self.reloads.shutdown)


def close_quietly(reranker: Reranker) -> None:
    """Release a reranker's store (its ``close`` hook when it has one); a failure is one log
    line, never a traceback at shutdown."""
    close = getattr(reranker, "close", None) or reranker.backend.close
    try:
        close()
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        log.warning("p4r serve: closing version %s of %s: %s%s", reranker.version,
                    reranker.dataset, type(exc).__name__, f": {text}" if text else "")
