"""Persistent LLM response cache: a re-run costs nothing and a crash resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any


def cache_key(model: str, prompt_version: str, payload: Any) -> str:
    """sha256 over model, prompt version and the canonical JSON of the request inputs."""
    body = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(f"{model}\0{prompt_version}\0{body}".encode()).hexdigest()


class ResponseCache:
    """``key → validated JSON output`` in sqlite; safe to share between worker threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, output TEXT NOT NULL, "
            "model TEXT, prompt_version TEXT, created REAL)"
        )
        self._db.commit()

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
        """Store one output; committed at once so a crash loses nothing already answered."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, output, model, prompt_version, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, json.dumps(output, ensure_ascii=False), model, prompt_version, time.time()),
            )
            self._db.commit()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
