"""The small interface both backends implement, and the records that cross it."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from p4r.encoder.fingerprint import Fingerprint
from p4r.settings import ProfileParams, VectorDatatype
from p4r.store.users import UserStore

PointId = int | str  # p4r's own points use 63-bit ints; the server's record collection, uuids


@dataclass(frozen=True)
class CollectionSpec:
    """Everything needed to create one collection version.

    ``multivector`` makes each point hold a matrix scored with MaxSim (best row), which is how
    the per-item ``items`` collection scores an item by its best persona. ``group_by`` names
    the payload keys :meth:`Backend.best_per_group` groups by; a store may keep a point-id map
    for each, written when the collection is sealed.
    """

    name: str
    dim: int
    keyword_indexes: tuple[str, ...] = ("item_id",)
    metadata: dict[str, Any] = field(default_factory=dict)
    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None
    multivector: bool = False
    group_by: tuple[str, ...] = ()
    datatype: VectorDatatype = "float32"
    # The most points one group holds (an item's personas): lets a store bound a top-k query
    # without knowing each group's size (see top_groups_bound).
    max_group_size: int | None = None
    # Keep vectors on disk (memory-mapped) instead of in RAM where the engine allows it.
    on_disk: bool = False
    # Which kind of p4r collection (personas, interactions, ...): a server lays kinds out
    # apart (shards, replicas, on-disk vectors).
    kind: str = ""

    def tenant(self, key: str) -> bool:
        """Whether the keyword index on ``key`` is a tenant index (Qdrant's ``is_tenant``):
        the engine then stores the points of each value side by side. Every query reads a
        group's points together (an item's personas), so the group keys are: measured on Edge
        at 125K personas, the engine's filtered query cost 0.80x (20 candidates) and 0.79x
        (100) of the same query without it, warm or cold caches alike."""
        return key in self.group_by


@dataclass(frozen=True)
class Record:
    """A stored point: id, optional vector, optional payload."""

    id: PointId
    vector: np.ndarray | None = None
    payload: dict[str, Any] | None = None


class GroupAnswer(NamedTuple):
    """One query's answer from :meth:`Backend.best_per_group`: the best point of each group
    returned (best first), and every requested group that has any point at all."""

    hits: list[GroupHit]
    present: set[str]


class GroupHit(NamedTuple):
    """Best-scoring point of one group (item): which point, its score, maybe its payload.

    A named tuple: one is built per returned item on the serving path, and a tuple is several
    times cheaper to make than a frozen dataclass.
    """

    group: str
    point_id: PointId
    score: float
    payload: dict[str, Any] | None = None


def vectors_by_id(records: Iterable[Record]) -> dict[PointId, np.ndarray]:
    """Vector by id of the records that carry one."""
    return {r.id: r.vector for r in records if r.vector is not None}


def top_groups_bound(sizes: Sequence[int], k: int) -> int:
    """How many best points surely hold the best point of each of the ``k`` best groups.

    In score order, the first point of a group is its best, and before the k-th group's first
    point there can be at most every point of the k − 1 groups ahead of it: so the sum of the
    k − 1 largest group sizes, plus one, suffices (exact, not a heuristic). At 100 candidates
    of 5 personas and k = 10 that is 46 points instead of 500.
    """
    present = sorted((s for s in sizes if s), reverse=True)
    if k > len(present):
        return sum(present)
    return sum(present[:k - 1]) + 1


class Backend(ABC):
    """A vector store holding p4r collections; ``edge`` and ``server`` implement it.

    Callers never ask which engine they have: everything that differs between engines
    (grouping, bounds, locks, sealing, layout) is behind these methods.
    """

    @abstractmethod
    def describe(self) -> str:
        """Where the data lives (folder or URL), for messages."""

    @abstractmethod
    def list_collections(self) -> list[str]:
        """Names of all collections."""

    @abstractmethod
    def collection_exists(self, name: str) -> bool:
        """Whether a collection of this exact name exists."""

    @abstractmethod
    def create_collection(self, spec: CollectionSpec) -> None:
        """Create a collection with its keyword payload indexes, before any point is inserted."""

    @abstractmethod
    def drop_collection(self, name: str) -> None:
        """Delete a collection and its data; no error if absent."""

    @abstractmethod
    def get_metadata(self, name: str) -> dict[str, Any]:
        """The p4r metadata stored with a collection."""

    @abstractmethod
    def update_metadata(self, name: str, updates: dict[str, Any]) -> None:
        """Merge keys into the stored metadata."""

    @abstractmethod
    def vector_size(self, name: str) -> int:
        """Dimension of the collection's vectors."""

    @abstractmethod
    def upsert(
        self, name: str, ids: Sequence[PointId], vectors: np.ndarray | Sequence[Any],
        payloads: Sequence[dict[str, Any]],
    ) -> None:
        """Insert or overwrite points. ``vectors`` is ``(n, d)``, or one ``(m_i, d)`` matrix per
        point for a multivector collection."""

    @abstractmethod
    def existing_ids(self, name: str, ids: Sequence[PointId]) -> set[PointId]:
        """Subset of ``ids`` already stored."""

    @abstractmethod
    def count(self, name: str) -> int:
        """Exact number of points."""

    @abstractmethod
    def count_distinct(self, name: str, key: str) -> int:
        """Exact number of distinct values of a keyword payload field."""

    def check_collection(self, name: str) -> list[str]:
        """What else is wrong with a stored collection (files the store keeps beside it)."""
        return []

    @abstractmethod
    def payload_indexes(self, name: str) -> set[str] | None:
        """Payload fields that have an index (verified by ``p4r index check``); None when the
        engine cannot tell (qdrant-client's local mode keeps none)."""

    @abstractmethod
    def scroll(
        self,
        name: str,
        *,
        match: tuple[str, str | Sequence[str]] | None = None,
        with_vectors: bool = False,
        payload_keys: Sequence[str] | None = None,
    ) -> Iterator[Record]:
        """Every point (optionally where ``payload[key] == value``, or is one of a list of
        values), in pages."""

    def scroll_all(self, name: str, *, match: tuple[str, str] | None = None) -> list[Record]:
        """Every point (optionally where ``payload[key] == value``) as one list: a small
        filtered read (an item's personas) the serving path awaits on a server."""
        return list(self.scroll(name, match=match))

    @abstractmethod
    def retrieve(
        self, name: str, ids: Sequence[PointId], *, with_vectors: bool = False,
        with_payload: bool = True,
    ) -> list[Record]:
        """Points by id (missing ids are skipped)."""

    def retrieve_payloads(self, name: str, ids: Sequence[PointId]) -> dict[PointId, dict[str, Any]]:
        """Payload by id, for the few points a response shows (missing ids are absent)."""
        return {r.id: r.payload or {} for r in self.retrieve(name, ids)}

    def retrieve_vectors(self, name: str, ids: Sequence[PointId]) -> dict[PointId, np.ndarray]:
        """Vector by id, without payload (missing ids are absent)."""
        return vectors_by_id(self.retrieve(name, ids, with_vectors=True, with_payload=False))

    @abstractmethod
    def best_per_group(
        self, name: str, vectors: np.ndarray, groups: Sequence[Sequence[str]], key: str = "item_id",
        *, limits: Sequence[int | None] | None = None,
    ) -> list[GroupAnswer]:
        """For each query vector, the best point of each requested group, exact cosine scores,
        and which requested groups have points at all.

        ``groups[i]`` lists the group values (item ids) for query ``i``; groups with no points
        are absent from the hits and from ``present``. Hits come back best first (ties by
        group). With ``limits[i]``, only the best ``limits[i]`` groups are returned (the engine
        is asked for just enough points, :func:`top_groups_bound`), while ``present`` still
        lists every requested group that has points. On a multivector collection the score is
        MaxSim: the best row's cosine.
        """

    @abstractmethod
    def group_sizes(self, name: str, key: str = "item_id") -> dict[str, int]:
        """Points per group (item) of a collection."""

    def warm_up_groups(self, name: str, limit: int, key: str = "item_id") -> list[str]:
        """Up to ``limit`` groups of a collection that a warm-up request may rank, from what
        this process already holds; none by default (an engine whose caches live in another
        process gains nothing from a warm-up here)."""
        return []

    @abstractmethod
    def groups_present(self, name: str, values: Sequence[str], key: str = "item_id") -> set[str]:
        """Which of ``values`` have at least one point (``payload[key] == value``)."""

    @abstractmethod
    def get_aliases(self) -> dict[str, str]:
        """Alias name → collection name."""

    @abstractmethod
    def set_aliases(self, mapping: dict[str, str | None]) -> None:
        """Point aliases at collections (None deletes) in one atomic step."""

    def replace_aliases(self, mapping: dict[str, str]) -> None:
        """Make ``mapping`` the whole alias set (repairs a damaged alias record)."""
        self.set_aliases({**{a: None for a in self.get_aliases() if a.startswith("p4r_")},
                          **mapping})

    # -- p4r's own records (swap history, applied migrations) --------------------------------
    @abstractmethod
    def record_entries(self, match: tuple[str, str]) -> list[tuple[str, dict[str, Any]]]:
        """(id, payload) of every record entry with ``payload[key] == value``."""

    @abstractmethod
    def record_put(self, entry_id: str, payload: dict[str, Any]) -> None:
        """Store or overwrite one record entry."""

    @abstractmethod
    def record_exists(self) -> bool:
        """Whether the record has been created."""

    @abstractmethod
    def ensure_record(self) -> bool:
        """Create the record if missing (never recreate it); True when created now."""

    def write_live_profiles(
        self, name: str,
        points: Callable[[], tuple[Sequence[PointId], np.ndarray, Sequence[dict[str, Any]]]],
    ) -> None:
        """Rewrite profile points of a published collection with live events folded in, where
        the engine shares such writes with every process at once (a server). ``points`` makes
        them; stores whose published collections are immutable (Edge, whose processes share
        the event log instead) do not call it."""
        ids, vectors, payloads = points()
        self.upsert(name, ids, vectors, payloads)

    @abstractmethod
    def catalog_delta(self) -> Any:
        """How this engine applies a catalog change without a full rebuild (a
        :class:`p4r.store.deltas.DeltaStrategy`: in place where published collections may be
        written, as an overlay version where they may not)."""

    @abstractmethod
    def delete_ids(self, name: str, ids: Sequence[PointId]) -> int:
        """Delete points by id; how many were asked for."""

    # -- user state ----------------------------------------------------------------------------
    @abstractmethod
    def user_store(self, dataset: str, fingerprint: Fingerprint, params: ProfileParams, *,
                   cache_size: int = 0, ttl: float = 0.0) -> UserStore:
        """The user state of ``dataset`` under one encoder (one object per process and
        encoder, so its caches are shared by every reranker of this backend). ``cache_size``
        profiles are kept in memory; ``ttl`` bounds how stale a cached profile may be where
        other hosts write (a server)."""

    @abstractmethod
    def drop_user_state(self, dataset: str) -> list[str]:
        """Delete the whole user state of ``dataset``; what was removed, for messages."""

    # -- lifecycle -----------------------------------------------------------------------------
    def seal(self, name: str) -> None:  # noqa: B027 - optional hook
        """Make a complete collection ready to serve (and, on Edge, safe to share)."""

    def writer(self, what: str, timeout: float = 0.0) -> contextlib.AbstractContextManager[None]:
        """Hold the store's writer lock for a whole operation (a no-op where the engine
        serialises writes itself)."""
        return contextlib.nullcontext()

    def free_bytes(self) -> int | None:
        """Free space where this store writes (None where the engine's own disk is not
        ours to see: a server)."""
        return None

    def release(self, names: Sequence[str]) -> None:  # noqa: B027 - optional hook
        """Let go of collections this process no longer serves (their files, on Edge)."""

    def check_writer(self) -> None:  # noqa: B027 - optional hook
        """The fencing check before aliases move: raise LockedError if this process no longer
        holds the writer lock it took (a lease that expired); a kernel lock cannot be lost."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files or connections."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_record(rec: Any, with_vectors: bool) -> Record:
    """Convert a point from either engine (same attribute names) to a :class:`Record`."""
    vector = None
    if with_vectors and rec.vector is not None:
        raw = rec.vector
        if isinstance(raw, dict):
            raw = raw.get("", next(iter(raw.values())))
        vector = np.asarray(raw, dtype=np.float32)
    pid = rec.id if isinstance(rec.id, int) else str(rec.id)
    return Record(id=pid, vector=vector, payload=dict(rec.payload or {}))
