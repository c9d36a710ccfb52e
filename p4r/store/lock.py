"""The writer lock of an embedded store: one writer at a time, any number of readers.

An advisory ``flock`` on a file in the store: the kernel drops it when the holder dies, so a
crash never leaves a stale lock. The holder writes its pid and command into the file, so a
second writer can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from p4r.errors import LockedError


class WriterLock:
    """Re-entrant (per process) exclusive lock on ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._depth = 0
        self._thread_lock = threading.RLock()

    def holder(self) -> str:
        """Who holds the lock, as written by the holder ('unknown' if unreadable)."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return "an unknown process"
        since = time.strftime("%H:%M:%S", time.localtime(float(info.get("since", 0))))
        return f"pid {info.get('pid')} ({info.get('command')}) since {since}"

    @contextlib.contextmanager
    def hold(self, what: str, timeout: float = 0.0) -> Iterator[None]:
        """Hold the lock for the block; wait up to ``timeout`` seconds, else raise LockedError."""
        with self._thread_lock:
            if self._depth == 0:
                self._acquire(what, timeout)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release()

    def _acquire(self, what: str, timeout: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    os.close(fd)
                    raise LockedError(
                        f"another p4r process is writing to {self.path.parent}: {holder}; "
                        f"wait for it (or pass --wait SECONDS) and run {what} again"
                    ) from None
                time.sleep(0.05)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] if sys.argv else what
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command or what,
                                  "what": what, "since": time.time()}).encode(), 0)
        self._fd = fd

    def _release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock now."""
        return self._depth > 0
