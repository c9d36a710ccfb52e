"""User state, apart from catalog versions: interactions (from files and live) and profiles.

A catalog version (personas, summaries, items) is immutable and published behind aliases; the
user state is not versioned with it. It is keyed by the encoder fingerprint (the interaction
vectors belong to one encoder), written in place, and read by every serving process:

* on a server it is two Qdrant collections per dataset and encoder, written by any host with
  the configured write consistency; a profile point is updated with a conditional write, so
  two hosts writing one user never lose an update (:mod:`p4r.store.server_users`);
* on Edge (one machine) it is one sqlite file per dataset in WAL mode, fsynced before an
  interaction is acknowledged and read by every process (:mod:`p4r.store.edge_users`).

Both answer the same calls the same way; :class:`UserStore` is that interface. A forgotten
user's interactions and profile are deleted and the user is remembered as forgotten, so a
later re-index from the dataset files does not bring them back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from p4r.encoder.fingerprint import Fingerprint
from p4r.encoder.profile import user_vector
from p4r.settings import ProfileParams
from p4r.store.naming import interaction_key, point_id

Origin = Literal["file", "live"]


@dataclass(frozen=True)
class InteractionRecord:
    """One interaction as the user state stores it (its vector is kept beside it)."""

    user_id: str
    item_id: str
    timestamp: float
    rating: float | None = None
    text: str = ""
    aspects: Mapping[str, Any] | None = None
    origin: Origin = "live"
    text_hash: str = ""  # hash of the text the vector was embedded from

    def key(self, dataset: str) -> int:
        """Its point id: one per (dataset, user, item, time), so a repeat is a no-op."""
        return point_id(*interaction_key(dataset, self.user_id, self.item_id, self.timestamp))

    def payload(self) -> dict[str, Any]:
        """The stored fields."""
        return {"user_id": self.user_id, "item_id": self.item_id, "ts": self.timestamp,
                "rating": self.rating, "text": self.text,
                "aspects": dict(self.aspects) if self.aspects else None,
                "origin": self.origin, "th": self.text_hash}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> InteractionRecord:
        """Inverse of :meth:`payload`."""
        rating = payload.get("rating")
        return cls(user_id=str(payload["user_id"]), item_id=str(payload["item_id"]),
                   timestamp=float(payload["ts"]),
                   rating=float(rating) if rating is not None else None,
                   text=str(payload.get("text") or ""), aspects=payload.get("aspects"),
                   origin="file" if payload.get("origin") == "file" else "live",
                   text_hash=str(payload.get("th") or ""))


@dataclass(frozen=True)
class RecentEntry:
    """One of the last n interactions a profile averages."""

    timestamp: float
    item_id: str
    key: int
    live: bool

    def as_json(self) -> dict[str, Any]:
        """Stored form."""
        return {"ts": self.timestamp, "item_id": self.item_id, "id": self.key,
                "live": self.live}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecentEntry:
        """Inverse of :meth:`as_json`."""
        return cls(float(data["ts"]), str(data["item_id"]), int(data["id"]),
                   bool(data.get("live")))


@dataclass(frozen=True)
class Profile:
    """A user's profile under one encoder: the decayed mean of the last n interactions.

    Attributes:
        vector: the unit profile vector (built with ``params``).
        recent: the last n interactions, oldest first.
        count: every interaction of the user.
        rev: bumped on every change (the conditional write compares it).
        params: γ and n the vector was built with.
        recent_vectors: the interaction vectors of ``recent`` by key, when read with
            ``profiles(..., with_recent=True)`` (None otherwise).
    """

    user_id: str
    vector: np.ndarray
    recent: tuple[RecentEntry, ...]
    count: int
    rev: int
    params: ProfileParams
    recent_vectors: Mapping[int, np.ndarray] | None = None

    def payload(self, writer: str = "") -> dict[str, Any]:
        """The stored fields (the vector is stored as the point's vector)."""
        return {"user_id": self.user_id, "recent": [e.as_json() for e in self.recent],
                "count": self.count, "rev": self.rev, "gamma": self.params.gamma,
                "last_n": self.params.last_n, "writer": writer}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], vector: np.ndarray) -> Profile:
        """Inverse of :meth:`payload`."""
        return cls(user_id=str(payload["user_id"]), vector=vector,
                   recent=tuple(RecentEntry.from_json(e) for e in payload.get("recent") or []),
                   count=int(payload.get("count") or 0), rev=int(payload.get("rev") or 0),
                   params=ProfileParams(float(payload.get("gamma") or 0.65),
                                        int(payload.get("last_n") or 10)))


def sort_key(entry: RecentEntry) -> tuple[float, str]:
    """Time order, ties by item id (the order every profile is built in)."""
    return entry.timestamp, entry.item_id


def merged_recent(recent: Sequence[RecentEntry], new: Sequence[RecentEntry],
                  last_n: int) -> tuple[RecentEntry, ...]:
    """The last ``last_n`` of a profile's entries plus new ones (the same key once)."""
    by_key = {e.key: e for e in recent}
    by_key.update({e.key: e for e in new})
    return tuple(sorted(by_key.values(), key=sort_key)[-last_n:])


def profile_vector(vectors: Mapping[int, np.ndarray], recent: Sequence[RecentEntry],
                   params: ProfileParams) -> np.ndarray:
    """The decayed mean over the vectors of ``recent`` (oldest first)."""
    return user_vector(np.stack([vectors[e.key] for e in recent]), gamma=params.gamma,
                       last_n=params.last_n)


@dataclass
class ForgetReport:
    """What forgetting a user removed."""

    dataset: str
    user_id: str
    interactions: int = 0
    profiles: int = 0
    already_forgotten: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"dataset": self.dataset, "user_id": self.user_id,
                "interactions": self.interactions, "profiles": self.profiles,
                "already_forgotten": self.already_forgotten}


@dataclass
class SyncReport:
    """What syncing the dataset's interactions into the user state did."""

    interactions: int = 0  # in the user state afterwards
    users: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    skipped_forgotten: int = 0
    encoded: int = 0
    profiles_updated: int = 0
    users_touched: set[str] = field(default_factory=set)


Encode = Callable[[Sequence[str]], np.ndarray]
TextOf = Callable[[InteractionRecord], str]  # the text an interaction's vector embeds


class UserStore(ABC):
    """Interactions and profiles of one dataset under one encoder.

    Args:
        dataset: dataset name.
        fingerprint: the encoder whose vectors the store holds.
        params: γ and n the profiles are written with.
    """

    def __init__(self, dataset: str, fingerprint: Fingerprint, params: ProfileParams) -> None:
        self.dataset = dataset
        self.fingerprint = fingerprint
        self.params = params

    # -- writes --------------------------------------------------------------------------------
    @abstractmethod
    def record(self, records: Sequence[InteractionRecord], vectors: np.ndarray) -> list[bool]:
        """Store interactions durably and update their users' profiles before returning.

        Returns, per record, whether it was new (the same user, item and time again is a
        no-op). Interactions of forgotten users are refused by the caller, not here.
        """

    @abstractmethod
    def file_keys(self) -> set[int]:
        """Keys of every interaction that came from the dataset files (not live)."""

    @abstractmethod
    def sync(self, records: Sequence[InteractionRecord], text_of: TextOf, encode: Encode, *,
             remove: set[int] | frozenset[int] = frozenset()) -> SyncReport:
        """Bring the interactions read from the dataset files in, and every interaction's
        vector up to date: add the missing ones, embed those (files or live) whose text to
        embed (``text_of``: the template over the review and the item summary) changed or
        has no vector under this encoder, delete the file interactions in ``remove`` (gone
        from the files), and rebuild the touched profiles (and those built with another γ or
        n). Forgotten users are skipped; live interactions are kept."""

    @abstractmethod
    def forget(self, user_id: str) -> ForgetReport:
        """Delete a user's interactions and profile and remember them as forgotten."""

    @abstractmethod
    def replace_vectors(self, records: Sequence[InteractionRecord],
                        vectors: np.ndarray) -> None:
        """Replace stored interactions (same keys) with new fields and vectors, e.g. after
        their aspects were extracted, and update the touched profiles."""

    @abstractmethod
    def drop(self) -> None:
        """Delete the whole user state of this dataset (every encoder)."""

    # -- reads ---------------------------------------------------------------------------------
    @abstractmethod
    def profiles(self, user_ids: Sequence[str], *,
                 with_recent: bool = False) -> dict[str, Profile]:
        """The profiles of the users that have one, in one read; ``with_recent`` also reads
        the vectors of each profile's recent interactions (``Profile.recent_vectors``) in
        the same call (a "because" and the ``interests`` mode need them)."""

    @abstractmethod
    def vectors(self, keys: Sequence[int]) -> dict[int, np.ndarray]:
        """Interaction vectors by key (missing ones absent)."""

    @abstractmethod
    def interactions(self, user_id: str) -> list[InteractionRecord]:
        """Every interaction of a user, oldest first."""

    @abstractmethod
    def forgotten(self, user_id: str) -> bool:
        """Whether the user was forgotten."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """``interactions``, ``users`` (with a profile) and ``forgotten``."""

    @abstractmethod
    def sample_users(self, limit: int) -> list[str]:
        """Up to ``limit`` user ids, sorted (explorer suggestions)."""

    def cached_profiles(self) -> int:
        """How many profiles this process holds in memory (0 where it reads every time)."""
        return 0

    def clear_cache(self) -> None:  # noqa: B027 - optional hook
        """Forget every profile held in memory (benchmarks time cold reads with it)."""

    def resize_cache(self, size: int, ttl: float = 0.0) -> None:  # noqa: B027 - optional hook
        """Keep up to ``size`` profiles in memory (``ttl``: how stale they may get where
        other hosts write); a store without a cache ignores it."""

    def pending_live(self, limit: int) -> list[InteractionRecord]:
        """Live interactions with text whose aspects were not extracted yet (oldest first)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files or connections."""


def fresh_profile(user_id: str, entries: Sequence[RecentEntry], vectors: Mapping[int, np.ndarray],
                  count: int, rev: int, params: ProfileParams) -> Profile:
    """A profile over ``entries`` (sorted, cut to n here)."""
    recent = tuple(sorted(entries, key=sort_key)[-params.last_n:])
    return Profile(user_id, profile_vector(vectors, recent, params), recent, count, rev, params)
