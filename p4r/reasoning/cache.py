"""Persistent LLM response cache: a re-run costs nothing and a crash resumes where it stopped."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from p4r.errors import StorageFullError, is_storage_full


def cache_key(model: str, prompt_version: str, payload: Any) -> str:
    """sha256 over model, prompt version and the canonical JSON of the request inputs."""
    body = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(f"{model}\0{prompt_version}\0{body}".encode()).hexdigest()


class ResponseCache:
    """``key → validated JSON output`` in sqlite; safe to share between worker threads.

    A full disk is one :class:`~p4r.errors.StorageFullError` naming the cache file: the
    answers already stored stay, so a re-run after freeing space pays only for the rest.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, output TEXT NOT "
                "NULL, model TEXT, prompt_version TEXT, created REAL)"
            )
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            if is_storage_full(exc):
                raise StorageFullError(path, "cannot create the LLM response cache") from None
            raise

    def get(self, key: str) -> Any | None:
        """The stored output, or None."""
        with self._lock:
            row = self._db.execute("SELECT output FROM responses WHERE key = ?",
                                   (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def has(self, key: str) -> bool:
        """Whether an answer is stored under ``key`` (without reading it)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone()
        return row is not None

    def put(self, key: str, output: Any, model: str, prompt_version: str) -> None:
        """Store one output; committed at once so a crash loses nothing already answered.

        Raises:
            StorageFullError: the disk is full; this answer is not stored.
        """
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO responses (key, output, model, prompt_version, "
                    "created) VALUES (?, ?, ?, ?, ?)",
                    (key, json.dumps(output, ensure_ascii=False), model, prompt_version,
                     time.time()),
                )
                self._db.commit()
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):  # never hide the error that matters
                    self._db.rollback()
                if is_storage_full(exc):
                    raise StorageFullError(self.path, "this LLM answer was not cached"
                                           ) from None
                raise

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
