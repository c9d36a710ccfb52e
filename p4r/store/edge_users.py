"""User state on one machine: one sqlite file per dataset, shared by every process.

WAL mode with full fsync: an interaction is acknowledged only after its row is on disk, and
several serving processes append and read at once (sqlite serialises the writers, so a
profile is always rebuilt from every interaction committed before it). Vectors are kept per
encoder fingerprint beside the interactions, so an encoder change re-embeds the texts instead
of losing the events. Each process caches profiles in a bounded LRU and drops a user's entry
as soon as any process changes that user (a change feed it polls on every read).

Tables: ``interactions`` (one row per user, item and time, from the files or live),
``vectors`` (interaction × encoder), ``profiles`` (user × encoder), ``forgotten`` and
``changes`` (the feed readers poll; compacted).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from p4r.encoder.cache import fingerprint_key, text_hash
from p4r.encoder.fingerprint import Fingerprint
from p4r.errors import (
    BackendError,
    DamagedStoreError,
    NotIndexedError,
    StorageFullError,
    is_storage_full,
)
from p4r.settings import ProfileParams
from p4r.store.lru import LRU
from p4r.store.users import (
    Encode,
    ForgetReport,
    InteractionRecord,
    Profile,
    RecentEntry,
    SyncReport,
    TextOf,
    UserStore,
    fresh_profile,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS interactions (
    id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, item_id TEXT NOT NULL, ts REAL NOT NULL,
    rating REAL, text TEXT NOT NULL DEFAULT '', aspects TEXT, origin TEXT NOT NULL,
    received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS interactions_user ON interactions (user_id, ts, item_id);
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER NOT NULL, fp TEXT NOT NULL, th TEXT NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (id, fp));
CREATE TABLE IF NOT EXISTS profiles (
    user_id TEXT NOT NULL, fp TEXT NOT NULL, vector BLOB NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (user_id, fp));
CREATE TABLE IF NOT EXISTS forgotten (user_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT);
"""
_CHUNK = 500  # ids per IN (...) query
RECENT_CACHE_SHARE = 10  # users whose recent vectors are cached: the profile cache's tenth
_KEEP_CHANGES = 20_000  # change-feed rows kept; a reader further behind clears its cache


def users_path(root: Path, dataset: str) -> Path:
    """Where the user state of ``dataset`` lives in an Edge store."""
    return root / "users" / f"{dataset}.sqlite"


class EdgeUserStore(UserStore):
    """A dataset's user state in one sqlite file, for one encoder fingerprint.

    Args:
        path: the sqlite file (created on first use).
        dataset: dataset name.
        fingerprint: the encoder whose vectors are read and written.
        params: γ and n the profiles are written with.
        cache_size: profiles kept in memory by this process.
    """

    def __init__(self, path: Path, dataset: str, fingerprint: Fingerprint,
                 params: ProfileParams, *, cache_size: int = 50_000) -> None:
        super().__init__(dataset, fingerprint, params)
        self.path = path
        self.fp = fingerprint_key(fingerprint)
        self._lock = threading.Lock()
        self._cache = LRU(cache_size)
        # A store on a read-only mount (or one this user may not write) is opened as an
        # immutable snapshot: readers never write, not even sqlite's shared-memory file.
        self.read_only = _read_only(path)
        # The recent interaction vectors of the most recently served users (~15 KB each at
        # 384-d and n = 10, so a tenth as many as profiles): "because" and the interests mode
        # read them on every request, and a read by key costs as much as the rest of a
        # default request (measured). Dropped with the user's profile on every change.
        self._recent = LRU(cache_size // RECENT_CACHE_SHARE)
        try:
            if self.read_only:
                self._db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True,
                                           check_same_thread=False, isolation_level=None)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False,
                                           isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            if is_storage_full(exc):
                raise StorageFullError(path, "cannot open the user state") from None
            raise DamagedStoreError(f"user state {path} is unreadable ({exc}); restore it from "
                                    "a backup or move it away (its interactions are then "
                                    "lost)") from None
        self._version = self._data_version()
        self._seen = self._last_change()
        self._inode = path.stat().st_ino if path.exists() else None

    # -- plumbing ------------------------------------------------------------------------------
    def _data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _last_change(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction; the real error is raised, not a failed rollback's."""
        if self.read_only:
            raise BackendError(f"the user state {self.path} is read-only (a read-only mount, or "
                               "not writable by this user): it can be read, not changed")
        try:
            gone = self.path.stat().st_ino != self._inode
        except FileNotFoundError:
            gone = True
        if gone:  # dropped (p4r index drop) under this open connection: refuse, lose nothing
            raise NotIndexedError(f"the user state of dataset {self.dataset!r} was dropped; "
                                  f"index it again (p4r index upsert --dataset {self.dataset})")
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if is_storage_full(exc):
                    raise StorageFullError(self.path, "nothing was written") from None
                raise BackendError(f"cannot write the user state {self.path}: {exc}") from None
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # the first error is the one
                        self._db.execute("ROLLBACK")
                if is_storage_full(exc):  # a full disk is not damage: nothing was written
                    raise StorageFullError(self.path, "nothing of this call was written") \
                        from None
                raise
            self._version = self._data_version()

    def _note_changes(self, db: sqlite3.Connection, users: set[str]) -> None:
        """Feed the users changed to every reader (inside the write transaction)."""
        db.executemany("INSERT INTO changes (user_id) VALUES (?)", [(u,) for u in users])
        last = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])
        if last % 1000 < len(users):  # about once every thousand changes
            db.execute("DELETE FROM changes WHERE seq <= ?", (last - _KEEP_CHANGES,))
        for user in users:
            self._cache.pop(user)
            self._recent.pop(user)

    def _poll(self) -> None:
        """Drop cached profiles of users another process (or connection) changed."""
        version = self._data_version()
        if version == self._version:
            return
        with self._lock:
            self._version = version
            rows = self._db.execute("SELECT seq, user_id FROM changes WHERE seq > ? "
                                    "ORDER BY seq", (self._seen,)).fetchall()
            if rows and rows[0][0] > self._seen + 1 and self._seen:
                self._cache.clear()  # compacted past what we saw: forget everything
                self._recent.clear()
            for seq, user in rows:
                self._cache.pop(user)
                self._recent.pop(user)
                self._seen = seq

    # -- writes --------------------------------------------------------------------------------
    def record(self, records: Sequence[InteractionRecord], vectors: np.ndarray) -> list[bool]:
        now = time.time()
        fresh: list[bool] = []
        with self._write() as db:
            for record, vector in zip(records, vectors, strict=True):
                key = record.key(self.dataset)
                cursor = db.execute(
                    "INSERT OR IGNORE INTO interactions (id, user_id, item_id, ts, rating, text,"
                    " aspects, origin, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, record.user_id, record.item_id, record.timestamp, record.rating,
                     record.text, _dumps(record.aspects), record.origin, now))
                fresh.append(cursor.rowcount == 1)
                if cursor.rowcount == 1:
                    db.execute("INSERT OR REPLACE INTO vectors (id, fp, th, vector) "
                               "VALUES (?, ?, ?, ?)", (key, self.fp, record.text_hash,
                                                      _blob(vector)))
            touched = {r.user_id for r, new in zip(records, fresh, strict=True) if new}
            self._rebuild_profiles(db, touched)
            self._note_changes(db, touched)
        return fresh

    def replace_vectors(self, records: Sequence[InteractionRecord],
                        vectors: np.ndarray) -> None:
        with self._write() as db:
            for record, vector in zip(records, vectors, strict=True):
                key = record.key(self.dataset)
                db.execute("UPDATE interactions SET rating = ?, text = ?, aspects = ? "
                           "WHERE id = ?", (record.rating, record.text,
                                            _dumps(record.aspects), key))
                db.execute("DELETE FROM vectors WHERE id = ?", (key,))  # other encoders re-embed
                db.execute("INSERT INTO vectors (id, fp, th, vector) VALUES (?, ?, ?, ?)",
                           (key, self.fp, record.text_hash, _blob(vector)))
            touched = {r.user_id for r in records}
            self._rebuild_profiles(db, touched)
            self._note_changes(db, touched)

    def file_keys(self) -> set[int]:
        with self._lock:
            return {int(r[0]) for r in self._db.execute(
                "SELECT id FROM interactions WHERE origin = 'file'")}

    def sync(self, records: Sequence[InteractionRecord], text_of: TextOf, encode: Encode, *,
             remove: set[int] | frozenset[int] = frozenset()) -> SyncReport:
        report = SyncReport()
        forgotten = {r[0] for r in self._db.execute("SELECT user_id FROM forgotten")}
        kept = [r for r in records if r.user_id not in forgotten]
        report.skipped_forgotten = len(records) - len(kept)
        by_key = {r.key(self.dataset): r for r in kept}
        known = self._known_keys(list(by_key))
        stored = self._stored_hashes(list(by_key) + self._live_keys())
        # Files first, then live interactions whose vector under this encoder is missing or
        # was embedded from another text (an item summary changed, a new encoder).
        candidates = list(by_key.items()) + [(r.key(self.dataset), r)
                                             for r in self._live_records()]
        todo: list[tuple[int, InteractionRecord, str]] = []
        for key, record in candidates:
            text = text_of(record)
            digest = text_hash(text)
            if stored.get(key) != digest:
                todo.append((key, record, digest))
        report.added = sum(1 for k in by_key if k not in known)
        report.changed = sum(1 for k, _, _ in todo if k in known or k not in by_key)
        vectors = encode([text_of(r) for _, r, _ in todo]) if todo else []
        report.encoded = len(todo)
        now = time.time()
        with self._write() as db:
            changed = {key for key, _, _ in todo}
            for key, record in by_key.items():
                if key not in known:
                    db.execute(
                        "INSERT OR IGNORE INTO interactions (id, user_id, item_id, ts, rating, "
                        "text, aspects, origin, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (key, record.user_id, record.item_id, record.timestamp, record.rating,
                         record.text, _dumps(record.aspects), "file", now))
                elif key in changed:  # the files' fields win for what came from the files
                    db.execute("UPDATE interactions SET rating = ?, text = ?, aspects = ?, "
                               "origin = 'file' WHERE id = ?", (record.rating, record.text,
                                                                 _dumps(record.aspects), key))
            for (key, _, digest), vector in zip(todo, vectors, strict=True):
                db.execute("INSERT OR REPLACE INTO vectors (id, fp, th, vector) VALUES "
                           "(?, ?, ?, ?)", (key, self.fp, digest, _blob(vector)))
            touched = {r.user_id for _, r, _ in todo}
            for chunk in _chunks(sorted(remove)):
                marks = _marks(chunk)
                touched |= {r[0] for r in db.execute(
                    f"SELECT DISTINCT user_id FROM interactions WHERE origin = 'file' AND id IN "
                    f"({marks})", chunk)}
                db.execute(f"DELETE FROM vectors WHERE id IN ({marks}) AND id IN (SELECT id "
                           f"FROM interactions WHERE origin = 'file')", chunk)
                report.removed += db.execute(f"DELETE FROM interactions WHERE origin = 'file' "
                                             f"AND id IN ({marks})", chunk).rowcount
            without = {row[0] for row in db.execute(
                "SELECT DISTINCT i.user_id FROM interactions i WHERE NOT EXISTS (SELECT 1 FROM "
                "profiles p WHERE p.user_id = i.user_id AND p.fp = ?)", (self.fp,))}
            stale = {row[0] for row in db.execute(
                "SELECT user_id FROM profiles WHERE fp = ? AND (json_extract(payload, '$.gamma')"
                " != ? OR json_extract(payload, '$.last_n') != ?)",
                (self.fp, self.params.gamma, self.params.last_n))}
            touched |= (without | stale) - forgotten
            report.profiles_updated = self._rebuild_profiles(db, touched)
            self._note_changes(db, touched)
        report.users_touched = touched
        counts = self.counts()
        report.interactions, report.users = counts["interactions"], counts["users"]
        return report

    def forget(self, user_id: str) -> ForgetReport:
        report = ForgetReport(self.dataset, user_id)
        with self._write() as db:
            report.already_forgotten = db.execute(
                "SELECT 1 FROM forgotten WHERE user_id = ?", (user_id,)).fetchone() is not None
            db.execute("DELETE FROM vectors WHERE id IN (SELECT id FROM interactions WHERE "
                       "user_id = ?)", (user_id,))
            report.interactions = db.execute("DELETE FROM interactions WHERE user_id = ?",
                                             (user_id,)).rowcount
            report.profiles = db.execute("DELETE FROM profiles WHERE user_id = ?",
                                         (user_id,)).rowcount
            db.execute("INSERT OR REPLACE INTO forgotten (user_id, at) VALUES (?, ?)",
                       (user_id, time.time()))
            self._note_changes(db, {user_id})
        # Deleted rows must not linger in the WAL or free pages of the file.
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return report

    def drop(self) -> None:
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def _rebuild_profiles(self, db: sqlite3.Connection, users: set[str]) -> int:
        """Recompute the profiles of ``users`` from their stored interactions (inside the write
        transaction, so every committed interaction is counted)."""
        n = self.params.last_n
        written = 0
        for user in sorted(users):
            rows = db.execute(
                "SELECT i.id, i.ts, i.item_id, i.origin, v.vector FROM interactions i JOIN "
                "vectors v ON v.id = i.id AND v.fp = ? WHERE i.user_id = ? "
                "ORDER BY i.ts DESC, i.item_id DESC LIMIT ?", (self.fp, user, n)).fetchall()
            if not rows:
                db.execute("DELETE FROM profiles WHERE user_id = ? AND fp = ?", (user, self.fp))
                continue
            count = int(db.execute("SELECT COUNT(*) FROM interactions WHERE user_id = ?",
                                   (user,)).fetchone()[0])
            old = db.execute("SELECT payload FROM profiles WHERE user_id = ? AND fp = ?",
                             (user, self.fp)).fetchone()
            rev = int(json.loads(old[0]).get("rev", 0)) + 1 if old else 1
            entries = [RecentEntry(float(ts), str(item), int(key), origin == "live")
                       for key, ts, item, origin, _ in rows]
            vectors = {int(row[0]): np.frombuffer(row[4], dtype=np.float32) for row in rows}
            profile = fresh_profile(user, entries, vectors, count, rev, self.params)
            db.execute("INSERT OR REPLACE INTO profiles (user_id, fp, vector, payload) "
                       "VALUES (?, ?, ?, ?)", (user, self.fp, _blob(profile.vector),
                                               json.dumps(profile.payload())))
            written += 1
        return written

    # -- reads ---------------------------------------------------------------------------------
    def profiles(self, user_ids: Sequence[str], *,
                 with_recent: bool = False) -> dict[str, Profile]:
        self._poll()
        found = self._cached_profiles(user_ids)
        return self._with_recent(found) if with_recent else found

    def _cached_profiles(self, user_ids: Sequence[str]) -> dict[str, Profile]:
        """Profiles through the cache (the caller polled the change feed)."""
        found: dict[str, Profile] = self._cache.get_many(user_ids)
        missing = [u for u in dict.fromkeys(user_ids) if u not in found]
        for chunk in _chunks(missing):
            with self._lock:
                rows = self._db.execute(
                    f"SELECT user_id, vector, payload FROM profiles WHERE fp = ? AND user_id "
                    f"IN ({_marks(chunk)})", [self.fp, *chunk]).fetchall()
            read = {str(u): Profile.from_payload(json.loads(p),
                                                 np.frombuffer(v, dtype=np.float32))
                    for u, v, p in rows}
            self._cache.put_many(read)
            found.update(read)
        return found

    def _with_recent(self, found: dict[str, Profile]) -> dict[str, Profile]:
        """The profiles with the vectors of their recent interactions: from the
        recent-vectors cache, else read by key in one query (faster than a join that parses
        each profile's JSON in SQL, measured)."""
        cached: dict[str, dict[int, np.ndarray]] = self._recent.get_many(list(found))
        held = {u: v for u, v in cached.items()
                if all(e.key in v for e in found[u].recent)}
        need = [e.key for u, p in found.items() if u not in held for e in p.recent]
        if need:
            read = self.vectors(need)
            fresh = {u: {e.key: read[e.key] for e in p.recent if e.key in read}
                     for u, p in found.items() if u not in held}
            self._recent.put_many(fresh)
            held.update(fresh)
        # Built directly: dataclasses.replace costs more than the rest of this (measured).
        return {u: Profile(p.user_id, p.vector, p.recent, p.count, p.rev, p.params, held[u])
                for u, p in found.items()}

    def vectors(self, keys: Sequence[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for chunk in _chunks(list(dict.fromkeys(keys))):
            with self._lock:
                rows = self._db.execute(
                    f"SELECT id, vector FROM vectors WHERE fp = ? AND id IN ({_marks(chunk)})",
                    [self.fp, *chunk]).fetchall()
            out.update({int(k): np.frombuffer(v, dtype=np.float32) for k, v in rows})
        return out

    def interactions(self, user_id: str) -> list[InteractionRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT user_id, item_id, ts, rating, text, aspects, origin FROM interactions "
                "WHERE user_id = ? ORDER BY ts, item_id", (user_id,)).fetchall()
        return [_record(row) for row in rows]

    def forgotten(self, user_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM forgotten WHERE user_id = ?",
                                    (user_id,)).fetchone() is not None

    def counts(self) -> dict[str, int]:
        with self._lock:
            interactions = self._db.execute("SELECT COUNT(*) FROM interactions").fetchone()[0]
            users = self._db.execute("SELECT COUNT(*) FROM profiles WHERE fp = ?",
                                     (self.fp,)).fetchone()[0]
            forgotten = self._db.execute("SELECT COUNT(*) FROM forgotten").fetchone()[0]
        return {"interactions": int(interactions), "users": int(users),
                "forgotten": int(forgotten)}

    def sample_users(self, limit: int) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT user_id FROM profiles WHERE fp = ? ORDER BY user_id "
                                    "LIMIT ?", (self.fp, limit)).fetchall()
        return [str(r[0]) for r in rows]

    def cached_profiles(self) -> int:
        return len(self._cache)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._recent.clear()

    def resize_cache(self, size: int, ttl: float = 0.0) -> None:
        """Every process's cache is exact (the change feed), so only the size matters."""
        self._cache.size = size
        self._recent.size = size // RECENT_CACHE_SHARE
        if not self._recent.size:
            self._recent.clear()

    def pending_live(self, limit: int) -> list[InteractionRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT user_id, item_id, ts, rating, text, aspects, origin FROM interactions "
                "WHERE origin = 'live' AND text != '' AND aspects IS NULL ORDER BY received "
                "LIMIT ?", (limit,)).fetchall()
        return [_record(row) for row in rows]

    def _stored_hashes(self, keys: list[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for chunk in _chunks(keys):
            rows = self._db.execute(f"SELECT id, th FROM vectors WHERE fp = ? AND id IN "
                                    f"({_marks(chunk)})", [self.fp, *chunk]).fetchall()
            out.update({int(k): str(h) for k, h in rows})
        return out

    def _known_keys(self, keys: list[int]) -> set[int]:
        out: set[int] = set()
        for chunk in _chunks(keys):
            rows = self._db.execute(f"SELECT id FROM interactions WHERE id IN ({_marks(chunk)})",
                                    chunk).fetchall()
            out.update(int(r[0]) for r in rows)
        return out

    def _live_keys(self) -> list[int]:
        return [int(r[0]) for r in self._db.execute(
            "SELECT id FROM interactions WHERE origin = 'live'")]

    def _live_records(self) -> list[InteractionRecord]:
        rows = self._db.execute(
            "SELECT user_id, item_id, ts, rating, text, aspects, origin FROM interactions "
            "WHERE origin = 'live'").fetchall()
        return [_record(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _read_only(path: Path) -> bool:
    """Whether the user state must be opened read-only: it exists and its folder cannot be
    written (a read-only mount answers EROFS to access() even for root)."""
    folder = path.parent if path.parent.exists() else path.parent.parent
    return path.exists() and not os.access(folder, os.W_OK)


def _record(row: Sequence[Any]) -> InteractionRecord:
    user, item, ts, rating, text, aspects, origin = row
    return InteractionRecord(user_id=str(user), item_id=str(item), timestamp=float(ts),
                             rating=float(rating) if rating is not None else None,
                             text=str(text or ""), aspects=json.loads(aspects) if aspects
                             else None, origin="file" if origin == "file" else "live")


def _dumps(value: Any) -> str | None:
    return json.dumps(dict(value)) if value else None


def _blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]
