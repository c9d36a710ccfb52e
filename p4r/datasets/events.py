"""The event log of live interactions: durable, shared by processes, replayed by re-indexing.

One sqlite file per dataset (``$P4R_DATA_DIR/events/<dataset>.sqlite``) in WAL mode with full
fsync: an interaction is acknowledged only after its row is on disk. Several serving processes
append and read it at once (sqlite locks the file); ``p4r index upsert`` folds every logged
event into the next version. The embedding computed when the event arrived is kept beside it,
keyed by the encoder fingerprint, so other processes can apply it without an encoder.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p4r.errors import DamagedStoreError, StorageFullError, is_storage_full

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL, item_id TEXT NOT NULL, ts REAL NOT NULL,
    rating REAL, text TEXT NOT NULL DEFAULT '', aspects TEXT, received REAL NOT NULL,
    UNIQUE (user_id, item_id, ts));
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, seq);
CREATE TABLE IF NOT EXISTS vectors (
    seq INTEGER NOT NULL, fp TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (seq, fp));
"""


@dataclass(frozen=True)
class Event:
    """One logged interaction."""

    seq: int
    user_id: str
    item_id: str
    timestamp: float
    rating: float | None
    text: str
    aspects: dict[str, Any] | None


def log_path(data_dir: Path, dataset: str) -> Path:
    """Where the event log of ``dataset`` lives."""
    return data_dir / "events" / f"{dataset}.sqlite"


class EventLog:
    """Append-only interactions with their embeddings; safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            if is_storage_full(exc):  # a full disk is not damage: the log is intact
                raise StorageFullError(path, "cannot open the event log") from None
            raise DamagedStoreError(f"event log {path} is unreadable ({exc}); restore it from a "
                                    "backup or move it away (its events are then lost)") from None
        self._version = self._data_version()

    def _data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def changed(self) -> bool:
        """True once after another connection (any process) committed; cheap to call often."""
        with self._lock:
            version = self._data_version()
            if version == self._version:
                return False
            self._version = version
            return True

    def append(self, rows: Sequence[dict[str, Any]], vectors: np.ndarray,
               fp_key: str) -> list[bool]:
        """Log rows (``user_id, item_id, timestamp, rating, text, aspects``) durably in one
        transaction; returns, per row, whether it was new (same user, item and time: a no-op).

        Raises:
            StorageFullError: the disk is full; nothing of this call was logged.
        """
        now = time.time()
        fresh: list[bool] = []
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for row, vector in zip(rows, vectors, strict=True):
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO events (user_id, item_id, ts, rating, text, "
                        "aspects, received) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (row["user_id"], row["item_id"], float(row["timestamp"]),
                         row.get("rating"), row.get("text") or "",
                         json.dumps(row["aspects"]) if row.get("aspects") else None, now))
                    fresh.append(cursor.rowcount == 1)
                    if cursor.rowcount == 1:
                        self._db.execute(
                            "INSERT OR REPLACE INTO vectors (seq, fp, vector) VALUES (?, ?, ?)",
                            (cursor.lastrowid, fp_key,
                             np.asarray(vector, dtype=np.float32).tobytes()))
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if is_storage_full(exc):
                    raise StorageFullError(self.path, "the interactions were not logged"
                                           ) from None
                raise
            self._version = self._data_version()
        return fresh

    def _rollback(self) -> None:
        """Undo the open transaction, if sqlite has not already: on SQLITE_FULL (and some I/O
        errors) it rolls back by itself, and a second ROLLBACK would raise "cannot rollback -
        no transaction is active", hiding the error that matters."""
        if not self._db.in_transaction:
            return
        # If even this fails the connection is unusable; the original error is the one to
        # report, so it is not replaced by this one.
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def since(self, seq: int) -> list[Event]:
        """Events after ``seq``, oldest first."""
        return self._select("WHERE seq > ? ORDER BY seq", (seq,))

    def for_user(self, user_id: str, after: int = 0) -> list[Event]:
        """A user's events after ``after``, oldest first."""
        return self._select("WHERE user_id = ? AND seq > ? ORDER BY seq", (user_id, after))

    def vectors(self, seqs: Sequence[int], fp_key: str) -> dict[int, np.ndarray]:
        """Stored embeddings of events under one encoder fingerprint."""
        if not seqs:
            return {}
        marks = ",".join("?" * len(seqs))
        with self._lock:
            rows = self._db.execute(f"SELECT seq, vector FROM vectors WHERE fp = ? AND seq IN "
                                    f"({marks})", [fp_key, *seqs]).fetchall()
        return {int(s): np.frombuffer(b, dtype=np.float32) for s, b in rows}

    def _select(self, where: str, args: tuple[Any, ...]) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, user_id, item_id, ts, rating, text, aspects FROM events " + where,
                args).fetchall()
        return [Event(int(r[0]), r[1], r[2], float(r[3]), r[4], r[5] or "",
                      json.loads(r[6]) if r[6] else None) for r in rows]

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()
