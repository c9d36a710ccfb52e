"""User state in a Qdrant server or cluster, shared by every serving host.

Two collections per dataset and encoder (:func:`~p4r.store.naming.user_collection`):
``interactions`` (one point per user, item and time; the review text and aspects in the
payload; vectors on disk, optionally float16) and ``profiles`` (one point per user: the
decayed mean vector, the last n interactions, a revision). Any host writes an interaction as a
point (with the configured write consistency) and then updates the user's profile with a
conditional write: the profile is replaced only if its revision is still the one the host
read (``update_filter``), or inserted only if it is still absent (``update_mode``). A host
that loses the race reads the winner's profile and merges again, so two hosts writing one
user never lose an update, and the next request on any host reads both.

Forgotten users are entries in the store's record collection; a forgotten user's points are
deleted by filter.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from qdrant_client import models

from p4r.encoder.cache import fingerprint_key, text_hash
from p4r.encoder.fingerprint import Fingerprint
from p4r.errors import BackendError
from p4r.settings import ProfileParams
from p4r.store.base import CollectionSpec
from p4r.store.lru import LRU
from p4r.store.naming import point_id, profile_key, user_collection
from p4r.store.users import (
    Encode,
    ForgetReport,
    InteractionRecord,
    Profile,
    RecentEntry,
    SyncReport,
    TextOf,
    UserStore,
    merged_recent,
    profile_vector,
)


class ServerOps(Protocol):
    """What the user state needs from the server backend (which builds it)."""

    layout: Any

    def collection_exists(self, name: str) -> bool: ...
    def create_collection(self, spec: CollectionSpec) -> None: ...
    def drop_collection(self, name: str) -> None: ...
    def upsert(self, name: str, ids: Sequence[Any], vectors: Any, payloads: Sequence[Any], *,
               durable: bool = False, mode: Any = None, only_if: Any = None) -> None: ...
    def existing_ids(self, name: str, ids: Sequence[Any]) -> set[Any]: ...
    def retrieve(self, name: str, ids: Sequence[Any], *, with_vectors: bool = False,
                 with_payload: bool = True, consistent: bool = False) -> list[Any]: ...
    async def aretrieve(self, name: str, ids: Sequence[Any], *, with_vectors: bool = False,
                        with_payload: bool = True, consistent: bool = False) -> list[Any]: ...
    def retrieve_payloads(self, name: str, ids: Sequence[Any]) -> dict[Any, dict[str, Any]]: ...
    def retrieve_vectors(self, name: str, ids: Sequence[Any]) -> dict[Any, np.ndarray]: ...
    def scroll(self, name: str, *, match: tuple[str, str] | None = None,
               with_vectors: bool = False, payload_keys: Sequence[str] | None = None) -> Any: ...
    def count(self, name: str) -> int: ...
    def delete_where(self, name: str, key: str, value: Any) -> int: ...
    def delete_ids(self, name: str, ids: Sequence[Any]) -> int: ...
    def user_collections(self, dataset: str) -> list[str]: ...
    def remember_forgotten(self, dataset: str, user_id: str) -> None: ...
    def is_forgotten(self, dataset: str, user_id: str) -> bool: ...
    def forgotten_users(self, dataset: str) -> set[str]: ...
    def clear_forgotten(self, dataset: str) -> None: ...

_BATCH = 256
RECENT_CACHE_SHARE = 10  # users whose recent vectors are cached: the profile cache's tenth
_ATTEMPTS = 16  # conditional profile writes lost in a row before giving up


class ServerUserStore(UserStore):
    """A dataset's user state under one encoder, in two Qdrant collections.

    Args:
        backend: the server backend (its client, layout and record collection).
        dataset: dataset name.
        fingerprint: the encoder whose vectors are read and written.
        params: γ and n the profiles are written with.
    """

    def __init__(self, backend: ServerOps, dataset: str, fingerprint: Fingerprint,
                 params: ProfileParams) -> None:
        super().__init__(dataset, fingerprint, params)
        self.backend = backend
        key = fingerprint_key(fingerprint)
        self.interactions_name = user_collection(dataset, "interactions", key)
        self.profiles_name = user_collection(dataset, "profiles", key)
        self._ready = False
        self._cache = LRU(0)  # user → (read at, profile); stale after ``_ttl`` seconds
        # user → (read at, recent interaction vectors by key), for a tenth as many users
        # (~15 KB each): under the same staleness bound, a cached profile needs no read.
        self._recent = LRU(0)
        self._ttl = 0.0

    def resize_cache(self, size: int, ttl: float = 0.0) -> None:
        """Cache profiles only with a staleness bound: another host's write is seen after at
        most ``ttl`` seconds (0: no cache, every read goes to Qdrant)."""
        self._ttl = ttl
        self._cache.size = size if ttl > 0 else 0
        self._recent.size = self._cache.size // RECENT_CACHE_SHARE
        if not self._cache.size:
            self._cache.clear()
        if not self._recent.size:
            self._recent.clear()

    def cached_profiles(self) -> int:
        return len(self._cache)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._recent.clear()

    # -- collections ---------------------------------------------------------------------------
    def _ensure(self) -> None:
        """Create the two collections on first write (their layout comes from the settings)."""
        if self._ready:
            return
        layout = self.backend.layout
        for name, kind in ((self.interactions_name, "interactions"),
                           (self.profiles_name, "profiles")):
            if not self.backend.collection_exists(name):
                kind_layout = layout.for_kind(kind)
                try:
                    self.backend.create_collection(CollectionSpec(
                        name=name, dim=self.fingerprint.dim,
                        keyword_indexes=("user_id",) if kind == "interactions" else (),
                        metadata={"p4r": "user state", "dataset": self.dataset, "kind": kind,
                                  "encoder": self.fingerprint.as_dict()},
                        datatype=kind_layout.datatype, on_disk=kind_layout.on_disk,
                        shard_number=kind_layout.shard_number,
                        replication_factor=kind_layout.replication_factor,
                        write_consistency_factor=kind_layout.write_consistency_factor))
                except BackendError:
                    if not self.backend.collection_exists(name):  # not a creation race
                        raise
        self._ready = True

    def _exists(self) -> bool:
        """Whether the collections exist (remembered once they do: no read per request)."""
        if not self._ready and self.backend.collection_exists(self.profiles_name):
            self._ready = True
        return self._ready

    # -- writes --------------------------------------------------------------------------------
    def record(self, records: Sequence[InteractionRecord], vectors: np.ndarray) -> list[bool]:
        self._ensure()
        keys = [r.key(self.dataset) for r in records]
        known = self.backend.existing_ids(self.interactions_name, keys)
        fresh = [k not in known and k not in keys[:i] for i, k in enumerate(keys)]
        new = [(k, r, v) for k, r, v, f in zip(keys, records, vectors, fresh, strict=True) if f]
        if new:
            self.backend.upsert(self.interactions_name, [k for k, _, _ in new],
                                np.stack([v for _, _, v in new]),
                                [r.payload() for _, r, _ in new], durable=True)
            by_user: dict[str, list[tuple[int, InteractionRecord, np.ndarray]]] = {}
            for row in new:
                by_user.setdefault(row[1].user_id, []).append(row)
            for user, rows in by_user.items():
                self._merge_profile(user, [RecentEntry(r.timestamp, r.item_id, k,
                                                       r.origin == "live") for k, r, _ in rows],
                                    {k: v for k, _, v in rows}, len(rows))
        return fresh

    def replace_vectors(self, records: Sequence[InteractionRecord],
                        vectors: np.ndarray) -> None:
        self._ensure()
        keys = [r.key(self.dataset) for r in records]
        self.backend.upsert(self.interactions_name, keys, np.asarray(vectors),
                            [r.payload() for r in records], durable=True)
        for user in sorted({r.user_id for r in records}):
            rows = [(k, r, v) for k, r, v in zip(keys, records, vectors, strict=True)
                    if r.user_id == user]
            self._merge_profile(user, [RecentEntry(r.timestamp, r.item_id, k,
                                                   r.origin == "live") for k, r, _ in rows],
                                {k: v for k, _, v in rows}, 0)

    def _merge_profile(self, user: str, entries: list[RecentEntry],
                       known: dict[int, np.ndarray], added: int) -> None:
        """Fold new interactions into the user's profile with a conditional write, retrying
        on the profile another host wrote meanwhile."""
        pid = point_id(*profile_key(self.dataset, user))
        for _ in range(_ATTEMPTS):
            current = self._read_profile(pid)
            base = current.recent if current is not None else ()
            recent = merged_recent(base, entries, self.params.last_n)
            need = [e.key for e in recent if e.key not in known]
            vectors = {**known, **self.vectors(need)}
            recent = tuple(e for e in recent if e.key in vectors)
            if not recent:
                return
            profile = Profile(user, profile_vector(vectors, recent, self.params), recent,
                              (current.count if current else 0) + added,
                              (current.rev if current else 0) + 1, self.params)
            writer = uuid.uuid4().hex
            if current is None:
                self.backend.upsert(self.profiles_name, [pid], profile.vector[None, :],
                                    [profile.payload(writer)], durable=True,
                                    mode=models.UpdateMode.INSERT_ONLY)
            else:
                self.backend.upsert(self.profiles_name, [pid], profile.vector[None, :],
                                    [profile.payload(writer)], durable=True,
                                    only_if=("rev", current.rev))
            stored = self.backend.retrieve_payloads(self.profiles_name, [pid]).get(pid) or {}
            if stored.get("writer") == writer:
                self._cache.pop(user)  # this host reads its own write at once
                self._recent.pop(user)
                return
        raise BackendError(f"the profile of user {user!r} was changed by other hosts "
                           f"{_ATTEMPTS} times in a row; retry the request")

    def file_keys(self) -> set[int]:
        if not self._exists():
            return set()
        return {int(r.id) for r in self.backend.scroll(self.interactions_name,
                                                       match=("origin", "file"),
                                                       payload_keys=[])}

    def sync(self, records: Sequence[InteractionRecord], text_of: TextOf, encode: Encode, *,
             remove: set[int] | frozenset[int] = frozenset()) -> SyncReport:
        self._ensure()
        report = SyncReport()
        forgotten = self._forgotten_users()
        kept = [r for r in records if r.user_id not in forgotten]
        report.skipped_forgotten = len(records) - len(kept)
        by_key = {r.key(self.dataset): r for r in kept}
        stored = self._stored_hashes(list(by_key))
        live = self._live_elsewhere()  # live interactions of other encoders, or of this one
        live_stored = self._stored_hashes(list(live))
        todo: list[tuple[int, InteractionRecord, str]] = []
        for key, record in [*by_key.items(), *live.items()]:
            digest = text_hash(text_of(record))
            if (stored.get(key) if key in by_key else live_stored.get(key)) != digest:
                todo.append((key, record, digest))
        report.added = sum(1 for k in by_key if k not in stored)
        report.changed = len(todo) - report.added
        vectors: dict[int, np.ndarray] = {}
        for start in range(0, len(todo), _BATCH):
            chunk = todo[start:start + _BATCH]
            embedded = encode([text_of(r) for _, r, _ in chunk])
            report.encoded += len(chunk)
            self.backend.upsert(
                self.interactions_name, [k for k, _, _ in chunk], embedded,
                [{**r.payload(), "th": digest} for _, r, digest in chunk], durable=True)
            vectors.update({k: v for (k, _, _), v in zip(chunk, embedded, strict=True)})
        touched = {r.user_id for _, r, _ in todo}
        if remove:
            gone = self.backend.retrieve_payloads(self.interactions_name, sorted(remove))
            touched |= {str(p.get("user_id")) for p in gone.values()}
            report.removed = self.backend.delete_ids(self.interactions_name, sorted(gone))
            for user in {str(p.get("user_id")) for p in gone.values()}:
                self._drop_from_profile(user, set(gone))
        all_users = {r.user_id for r in kept} | {r.user_id for r in live.values()}
        have = set(self._profile_users(sorted(all_users)))
        stale = {u for u, p in self.profiles(sorted(have)).items() if p.params != self.params}
        touched |= (all_users - have) | stale
        by_user: dict[str, list[tuple[int, InteractionRecord]]] = {}
        for key, record in [*by_key.items(), *live.items()]:
            if record.user_id in touched:
                by_user.setdefault(record.user_id, []).append((key, record))
        for user in sorted(touched):
            rows = by_user.get(user, [])
            self._merge_profile(user, [RecentEntry(r.timestamp, r.item_id, k,
                                                   r.origin == "live") for k, r in rows],
                                {k: vectors[k] for k, _ in rows if k in vectors}, 0)
        report.profiles_updated = len(touched)
        report.users_touched = touched
        counts = self.counts()
        report.interactions, report.users = counts["interactions"], counts["users"]
        return report

    def _drop_from_profile(self, user: str, keys: set[int]) -> None:
        """Rebuild a profile without interactions that were deleted (from its full history,
        which is small per user)."""
        pid = point_id(*profile_key(self.dataset, user))
        history = [r for r in self.interactions(user) if r.key(self.dataset) not in keys]
        entries = [RecentEntry(r.timestamp, r.item_id, r.key(self.dataset), r.origin == "live")
                   for r in history]
        recent = merged_recent((), entries, self.params.last_n)
        vectors = self.vectors([e.key for e in recent])
        recent = tuple(e for e in recent if e.key in vectors)
        if not recent:
            self.backend.delete_ids(self.profiles_name, [pid])
            return
        current = self._read_profile(pid)
        profile = Profile(user, profile_vector(vectors, recent, self.params), recent,
                          len(history), (current.rev if current else 0) + 1, self.params)
        self.backend.upsert(self.profiles_name, [pid], profile.vector[None, :],
                            [profile.payload(uuid.uuid4().hex)], durable=True)

    def forget(self, user_id: str) -> ForgetReport:
        self._cache.pop(user_id)
        self._recent.pop(user_id)
        report = ForgetReport(self.dataset, user_id,
                              already_forgotten=self.backend.is_forgotten(self.dataset,
                                                                          user_id))
        # Remembered first: a host that checks before writing refuses the user from now on.
        self.backend.remember_forgotten(self.dataset, user_id)
        for name in self.backend.user_collections(self.dataset):
            removed = self.backend.delete_where(name, "user_id", user_id)
            if "_interactions_u" in name:
                report.interactions += removed
            else:
                report.profiles += removed
        return report

    def drop(self) -> None:
        for name in self.backend.user_collections(self.dataset):
            self.backend.drop_collection(name)
        self.backend.clear_forgotten(self.dataset)

    # -- reads ---------------------------------------------------------------------------------
    def _read_profile(self, pid: int) -> Profile | None:
        found = self.backend.retrieve(self.profiles_name, [pid], with_vectors=True)
        if not found or found[0].vector is None:
            return None
        return Profile.from_payload(found[0].payload or {}, found[0].vector)

    def profiles(self, user_ids: Sequence[str], *,
                 with_recent: bool = False) -> dict[str, Profile]:
        if not user_ids or not self._exists():
            return {}
        out, ids, now = self._cached(user_ids)
        if ids:
            found = self.backend.retrieve(self.profiles_name, list(ids), with_vectors=True,
                                          consistent=True)
            out.update(self._read(found, ids, now))
        if with_recent and out:
            held, keys = self._cached_recent(out, now)
            vectors = self.backend.retrieve(self.interactions_name, keys, with_vectors=True,
                                            with_payload=False, consistent=True) if keys else []
            out = self._with_recent(out, held, vectors, now)
        return out

    async def aprofiles(self, user_ids: Sequence[str], *,
                        with_recent: bool = False) -> dict[str, Profile]:
        """:meth:`profiles` through the backend's async client (the serving path)."""
        if not user_ids or not self._exists():
            return {}
        out, ids, now = self._cached(user_ids)
        if ids:
            found = await self.backend.aretrieve(self.profiles_name, list(ids),
                                                 with_vectors=True, consistent=True)
            out.update(self._read(found, ids, now))
        if with_recent and out:
            held, keys = self._cached_recent(out, now)
            vectors = await self.backend.aretrieve(
                self.interactions_name, keys, with_vectors=True, with_payload=False,
                consistent=True) if keys else []
            out = self._with_recent(out, held, vectors, now)
        return out

    def _cached_recent(self, profiles: dict[str, Profile], now: float
                       ) -> tuple[dict[str, dict[int, np.ndarray]], list[int]]:
        """Recent vectors still fresh in the cache (covering the profile's keys), and the
        interaction keys to read for the others."""
        held: dict[str, dict[int, np.ndarray]] = {}
        if self._recent.size:
            for user, (read_at, vectors) in self._recent.get_many(list(profiles)).items():
                if now - read_at < self._ttl and all(e.key in vectors
                                                      for e in profiles[user].recent):
                    held[user] = vectors
        keys = list(dict.fromkeys(e.key for u, p in profiles.items() if u not in held
                                  for e in p.recent))
        return held, keys

    def _with_recent(self, profiles: dict[str, Profile], held: dict[str, dict[int, np.ndarray]],
                     records: Sequence[Any], now: float) -> dict[str, Profile]:
        """The profiles with the vectors of their recent interactions attached (cached, or
        the interaction points just read by id)."""
        by_key = {int(r.id): np.asarray(r.vector, dtype=np.float32) for r in records
                  if r.vector is not None}
        fresh = {u: {e.key: by_key[e.key] for e in p.recent if e.key in by_key}
                 for u, p in profiles.items() if u not in held}
        if self._recent.size and fresh:
            self._recent.put_many({u: (now, v) for u, v in fresh.items()})
        held = {**held, **fresh}
        return {u: Profile(p.user_id, p.vector, p.recent, p.count, p.rev, p.params, held[u])
                for u, p in profiles.items()}

    def _cached(self, user_ids: Sequence[str]) -> tuple[dict[str, Profile], dict[int, str],
                                                        float]:
        """Profiles still fresh in the cache, and the point ids of the others."""
        now = time.monotonic()
        out: dict[str, Profile] = {}
        if self._cache.size:
            for user, (read_at, profile) in self._cache.get_many(user_ids).items():
                if now - read_at < self._ttl:
                    out[user] = profile
        ids = {point_id(*profile_key(self.dataset, u)): u for u in dict.fromkeys(user_ids)
               if u not in out}
        return out, ids, now

    def _read(self, found: Sequence[Any], ids: dict[int, str], now: float) -> dict[str, Profile]:
        read = {ids[r.id]: Profile.from_payload(r.payload or {}, r.vector)
                for r in found if r.vector is not None and r.id in ids}
        if self._cache.size:
            self._cache.put_many({u: (now, p) for u, p in read.items()})
        return read

    def vectors(self, keys: Sequence[int]) -> dict[int, np.ndarray]:
        if not keys or not self._exists():
            return {}
        return {int(k): v for k, v in self.backend.retrieve_vectors(
            self.interactions_name, list(dict.fromkeys(keys))).items()}

    def interactions(self, user_id: str) -> list[InteractionRecord]:
        if not self._exists():
            return []
        records = [InteractionRecord.from_payload(r.payload or {}) for r in
                   self.backend.scroll(self.interactions_name, match=("user_id", user_id))]
        return sorted(records, key=lambda r: (r.timestamp, r.item_id))

    def forgotten(self, user_id: str) -> bool:
        return self.backend.is_forgotten(self.dataset, user_id)

    def counts(self) -> dict[str, int]:
        if not self._exists():
            return {"interactions": 0, "users": 0,
                    "forgotten": len(self._forgotten_users())}
        return {"interactions": self.backend.count(self.interactions_name),
                "users": self.backend.count(self.profiles_name),
                "forgotten": len(self._forgotten_users())}

    def sample_users(self, limit: int) -> list[str]:
        if not self._exists():
            return []
        users = []
        for record in self.backend.scroll(self.profiles_name, payload_keys=["user_id"]):
            users.append(str((record.payload or {}).get("user_id")))
            if len(users) >= limit:
                break
        return sorted(users)

    def pending_live(self, limit: int) -> list[InteractionRecord]:
        if not self._exists():
            return []
        out = []
        for record in self.backend.scroll(self.interactions_name, match=("origin", "live")):
            payload = record.payload or {}
            if payload.get("text") and not payload.get("aspects"):
                out.append(InteractionRecord.from_payload(payload))
                if len(out) >= limit:
                    break
        return out

    # -- helpers -------------------------------------------------------------------------------
    def _stored_hashes(self, keys: list[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for start in range(0, len(keys), 1024):
            chunk = keys[start:start + 1024]
            for pid, payload in self.backend.retrieve_payloads(self.interactions_name,
                                                               chunk).items():
                out[int(pid)] = str(payload.get("th") or "")
        return out

    def _live_elsewhere(self) -> dict[int, InteractionRecord]:
        """Live interactions stored under any encoder of this dataset (they survive an encoder
        change: their text is re-embedded)."""
        out: dict[int, InteractionRecord] = {}
        for name in self.backend.user_collections(self.dataset):
            if "_interactions_u" not in name:
                continue
            for record in self.backend.scroll(name, match=("origin", "live")):
                out[int(record.id)] = InteractionRecord.from_payload(record.payload or {})
        return out

    def _profile_users(self, users: list[str]) -> list[str]:
        return list(self.profiles(users))

    def _forgotten_users(self) -> set[str]:
        return self.backend.forgotten_users(self.dataset)
