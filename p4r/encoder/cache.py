"""Persistent embedding cache keyed by encoder fingerprint and text hash (sqlite, stdlib).

Re-indexing unchanged texts, resuming a crashed build, or indexing the same data into a second
backend then costs no encoding.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from p4r.encoder.fingerprint import Fingerprint
from p4r.errors import StorageFullError, is_storage_full


def text_hash(text: str) -> str:
    """sha256 of the exact text the encoder reads."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint_key(fp: Fingerprint) -> str:
    """One string per distinct encoder, used as the cache partition.

    Built from exactly what fingerprint equality compares (weights, dim, template, sequence
    length), so vectors cached at one ``max_seq_length`` are never served for another, and the
    same weights under another path share their vectors.
    """
    return f"{fp.weights_sha256}|{fp.dim}|{fp.template}|len={fp.max_seq_length}"


class EmbeddingCache:
    """``(fingerprint, text hash) → float32 vector`` in one sqlite file.

    A full disk is one :class:`~p4r.errors.StorageFullError` naming the cache file; what was
    committed before stays usable, so the run resumes once there is space.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path))
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (fp TEXT NOT NULL, hash TEXT NOT NULL, "
                "vector BLOB NOT NULL, PRIMARY KEY (fp, hash))"
            )
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            if is_storage_full(exc):
                raise StorageFullError(path, "cannot create the embedding cache") from None
            raise

    def get_many(self, fp: Fingerprint, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors for the hashes that have one."""
        key = fingerprint_key(fp)
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT hash, vector FROM embeddings WHERE fp = ? AND hash IN ({marks})",
                [key, *chunk],
            )
            for h, blob in rows:
                found[h] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, fp: Fingerprint, items: dict[str, np.ndarray]) -> None:
        """Store vectors (committed at once, so a crash keeps what was encoded).

        Raises:
            StorageFullError: the disk is full; this batch is not stored (earlier ones are).
        """
        key = fingerprint_key(fp)
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings (fp, hash, vector) VALUES (?, ?, ?)",
                [(key, h, np.asarray(v, dtype=np.float32).tobytes()) for h, v in items.items()],
            )
            self._db.commit()
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):  # never hide the error that matters
                self._db.rollback()
            if is_storage_full(exc):
                raise StorageFullError(self.path, "embeddings computed in this batch were not "
                                       "cached") from None
            raise

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def encode_cached(
    texts: Sequence[str],
    fp: Fingerprint,
    encode: Callable[[Sequence[str]], np.ndarray],
    cache: EmbeddingCache | None,
) -> np.ndarray:
    """Embed ``texts``, reading and filling ``cache`` when one is given."""
    hashes = [text_hash(t) for t in texts]
    known = cache.get_many(fp, hashes) if cache else {}
    missing = list(dict.fromkeys(h for h in hashes if h not in known))
    if missing:
        by_hash = dict(zip(hashes, texts, strict=True))
        fresh = encode([by_hash[h] for h in missing])
        new = dict(zip(missing, fresh, strict=True))
        if cache:
            cache.put_many(fp, new)
        known.update(new)
    return np.stack([known[h] for h in hashes]).astype(np.float32, copy=False)
