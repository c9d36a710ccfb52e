"""The writer lease of a Qdrant server store: one writer at a time across machines.

The lease is one point of the store's record collection: who holds it (host, pid, command),
since when, a random token, and when it expires. A writer takes it with a conditional write
(insert only if absent, or replace only an expired holder's token), keeps it alive from a
heartbeat thread, checks it once more just before it moves aliases (the fencing check: a
writer that lost its lease, say after a long pause, publishes nothing), and deletes it when
done. A crashed holder's lease expires after ``ttl`` seconds, so nothing stays locked forever.
Clocks of the hosts are compared: keep them in sync (NTP) and the ttl well above any skew.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from qdrant_client import models

from p4r.errors import LockedError

LEASE_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "p4r/writer-lease"))


class LeaseStore(Protocol):
    """What the lease needs from the server backend."""

    def describe(self) -> str: ...
    def ensure_record(self) -> bool: ...
    def read_lease(self) -> dict[str, Any] | None: ...
    def write_lease(self, payload: dict[str, Any], *, replacing: str | None) -> None: ...
    def delete_lease(self, token: str) -> None: ...


class WriterLease:
    """Re-entrant (per process) writer lease held in Qdrant.

    Args:
        store: the server backend.
        ttl: seconds a lease lives without a heartbeat.
    """

    def __init__(self, store: LeaseStore, ttl: float = 60.0) -> None:
        self.store = store
        self.ttl = ttl
        self._token: str | None = None
        self._depth = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._lost: str | None = None

    @contextlib.contextmanager
    def hold(self, what: str, timeout: float = 0.0) -> Iterator[None]:
        """Hold the lease for the block; wait up to ``timeout`` seconds, else LockedError."""
        with self._lock:
            if self._depth == 0:
                self._acquire(what, timeout)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._release()

    def check(self) -> None:
        """The fencing check before a publication: raise LockedError unless this process
        still holds an unexpired lease."""
        if self._token is None:
            return  # not holding one: nothing was taken, so nothing to fence
        current = self.store.read_lease()
        if self._lost or current is None or current.get("token") != self._token \
                or float(current.get("expires_at", 0)) <= time.time():
            holder = _describe(current) if current else "nobody"
            raise LockedError(f"this process lost the writer lease of {self.store.describe()} "
                              f"(now held by {holder}); nothing was published — run the "
                              "command again")

    # -- internals -----------------------------------------------------------------------------
    def _acquire(self, what: str, timeout: float) -> None:
        self.store.ensure_record()
        token = uuid.uuid4().hex
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            current = self.store.read_lease()
            now = time.time()
            if current is None or float(current.get("expires_at", 0)) <= now:
                payload = _payload(token, what, now, self.ttl)
                self.store.write_lease(payload, replacing=current.get("token")
                                       if current else None)
                won = self.store.read_lease()
                if won is not None and won.get("token") == token:
                    break
                current = won
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"another p4r process is writing to {self.store.describe()}: "
                    f"{_describe(current)}; wait for it (or pass --wait SECONDS) and run "
                    f"{what} again")
            time.sleep(0.2)
        self._token = token
        self._lost = None
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, args=(what,), daemon=True,
                                      name="p4r-lease")
        self._beat.start()

    def _heartbeat(self, what: str) -> None:
        while not self._stop.wait(self.ttl / 4):
            token = self._token
            if token is None:
                return
            try:
                current = self.store.read_lease()
                if current is None or current.get("token") != token:
                    self._lost = _describe(current) if current else "nobody"
                    return
                payload = {**current, "expires_at": time.time() + self.ttl}
                self.store.write_lease(payload, replacing=token)
            except Exception as exc:  # a failed beat: the fencing check decides later
                self._lost = f"an error renewing it ({type(exc).__name__})"

    def _release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        token, self._token = self._token, None
        if token is not None:
            with contextlib.suppress(Exception):
                self.store.delete_lease(token)

    @property
    def held(self) -> bool:
        """Whether this process holds the lease now."""
        return self._depth > 0


def _payload(token: str, what: str, now: float, ttl: float) -> dict[str, Any]:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] if sys.argv else what
    return {"kind": "lease", "token": token, "host": socket.gethostname(),
            "pid": os.getpid(), "command": command or what, "what": what, "since": now,
            "expires_at": now + ttl}


def _describe(lease: dict[str, Any] | None) -> str:
    if not lease:
        return "an unknown process"
    since = time.strftime("%H:%M:%S", time.localtime(float(lease.get("since", 0))))
    return (f"host {lease.get('host')} pid {lease.get('pid')} ({lease.get('command')}) "
            f"since {since}")


def lease_filter(token: str) -> models.Filter:
    """Points of the record that are the lease with this token."""
    return models.Filter(must=[
        models.HasIdCondition(has_id=[LEASE_ID]),
        models.FieldCondition(key="token", match=models.MatchValue(value=token))])


ONE = np.ones((1, 1), dtype=np.float32)
