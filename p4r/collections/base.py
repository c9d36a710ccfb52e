"""The small interface both backends implement, and the records that cross it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CollectionSpec:
    """Everything needed to create one collection version."""

    name: str
    dim: int
    keyword_indexes: tuple[str, ...] = ("item_id",)
    metadata: dict[str, Any] = field(default_factory=dict)
    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None


@dataclass(frozen=True)
class Record:
    """A stored point: id, optional vector, optional payload."""

    id: str
    vector: np.ndarray | None = None
    payload: dict[str, Any] | None = None


@dataclass(frozen=True)
class GroupHit:
    """Best-scoring point of one group (item): which point, its score, maybe its payload.

    ``point_id`` is whatever id object the engine returned (``str`` or ``uuid.UUID``); pass it
    back to :meth:`Backend.retrieve` unchanged.
    """

    group: str
    point_id: Any
    score: float
    payload: dict[str, Any] | None = None


class Backend(ABC):
    """A vector store holding p4r collections; ``edge`` and ``server`` implement it."""

    kind: str = ""

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
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        """Insert or overwrite points (ids are uuid strings)."""

    @abstractmethod
    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        """Subset of ``ids`` already stored."""

    @abstractmethod
    def count(self, name: str) -> int:
        """Exact number of points."""

    @abstractmethod
    def count_distinct(self, name: str, key: str) -> int:
        """Exact number of distinct values of a keyword payload field."""

    @abstractmethod
    def scroll(
        self,
        name: str,
        *,
        match: tuple[str, str] | None = None,
        with_vectors: bool = False,
        payload_keys: Sequence[str] | None = None,
    ) -> Iterator[Record]:
        """Every point (optionally where ``payload[key] == value``), in pages."""

    @abstractmethod
    def retrieve(
        self, name: str, ids: Sequence[Any], *, with_vectors: bool = False,
        with_payload: bool = True,
    ) -> list[Record]:
        """Points by id (``str`` or ``uuid.UUID``; missing ids are skipped)."""

    @abstractmethod
    def best_per_group(
        self, name: str, vectors: np.ndarray, groups: Sequence[Sequence[str]], key: str = "item_id"
    ) -> list[list[GroupHit]]:
        """For each query vector, the best point of each requested group, exact cosine scores.

        ``groups[i]`` lists the group values (item ids) for query ``i``; groups with no points
        are absent from the answer. Hits come back best first.
        """

    @abstractmethod
    def get_aliases(self) -> dict[str, str]:
        """Alias name → collection name."""

    @abstractmethod
    def set_aliases(self, mapping: dict[str, str | None]) -> None:
        """Point aliases at collections (None deletes) in one atomic step."""

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
    return Record(id=str(rec.id), vector=vector, payload=dict(rec.payload or {}))
