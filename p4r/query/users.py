"""User vectors: stored profiles, live events, raw histories, and the encoder they need.

A user's vector is the decayed mean of their last n interaction embeddings. For a user the
version indexed it is one retrieve of their profile point, kept in a bounded LRU; live
interactions are logged durably in the dataset's event log (:mod:`p4r.datasets.events`),
which every process serving the dataset reads, and applied on read: the next request of that
user reflects them. ``history`` requests embed raw interactions with the serving encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from p4r.datasets.events import EventLog
from p4r.datasets.jsonl import parse_timestamp
from p4r.datasets.models import Interaction
from p4r.encoder.base import TextEncoder
from p4r.encoder.cache import fingerprint_key
from p4r.encoder.factory import serving_encoder
from p4r.encoder.profile import user_vector
from p4r.encoder.templates import interaction_text
from p4r.errors import ConfigError, InputError, NotFoundError, UnknownUserError
from p4r.query.binding import ServedVersion
from p4r.query.models import AddReport, LiveInteraction, ProfileEntry, UserProfile
from p4r.query.results import RerankRequest
from p4r.settings import QuerySettings
from p4r.store.base import Backend, PointId
from p4r.store.naming import interaction_key, point_id, profile_key, summary_key

# (timestamp, item id, source): source is the interaction point id of an indexed interaction,
# or minus the event sequence number of a live one.
Entry = tuple[float, str, PointId]


class UserVectors:
    """Resolves the vector of a request's user, and records live interactions.

    Args:
        dataset: the dataset served.
        backend: the store.
        query: γ, n and cache sizes.
        events: the dataset's event log (needed to record interactions; applied when given).
    """

    def __init__(self, dataset: str, backend: Backend, query: QuerySettings,
                 events: EventLog | None) -> None:
        self.dataset = dataset
        self.backend = backend
        self.query = query
        self.events = events

    # -- live events ---------------------------------------------------------------------------
    def poll(self, served: ServedVersion, *, force: bool = False) -> None:
        """Apply events other processes (or this one) logged since the last look."""
        if self.events is None or not (force or self.events.changed()):
            return
        with served.lock:
            for event in self.events.since(served.polled):
                if event.seq > served.manifest.log_seq:
                    served.live.setdefault(event.user_id, []).append(event)
                    served.users.pop(event.user_id)
                served.polled = max(served.polled, event.seq)

    def add_interactions(self, served: ServedVersion,
                         interactions: Sequence[LiveInteraction | Mapping[str, Any]]
                         ) -> AddReport:
        """Log new interactions durably, then make the users' next requests reflect them.

        Each is encoded with the serving encoder (torch or ONNX), appended to the event log
        (fsynced) and applied to the user's profile; the same user, item and time again is a
        no-op. ``p4r-index upsert`` folds the log into the next version.
        """
        if self.events is None:
            raise ConfigError("live interactions need the dataset's event log "
                              "(open the reranker with p4r.query.open_reranker)")
        rows = [_live(entry, i) for i, entry in enumerate(interactions)]
        if not rows:
            raise InputError("no interactions given", field="interactions")
        summaries = self.summaries(served, [r.item_id for r in rows])
        for i, row in enumerate(rows):
            if row.item_id not in summaries and not (row.text or row.aspects):
                raise InputError(f"item {row.item_id!r} is unknown to dataset {self.dataset!r}; "
                                 "give its text or aspects", field=f"interactions[{i}].item_id")
        texts = [interaction_text(Interaction(
            user_id=r.user_id, item_id=r.item_id, timestamp=r.timestamp, rating=r.rating,
            text=r.text, aspects=r.aspects, item_summary=summaries.get(r.item_id, "")))
            for r in rows]
        fresh = self.events.append([r.model_dump() for r in rows],
                                   encoder_for(served).encode(texts), _fp_key(served))
        self.poll(served, force=True)
        users = sorted({r.user_id for r in rows})
        if served.profiles:
            self._write_profiles(served, users)
        return AddReport(accepted=sum(fresh), duplicates=len(fresh) - sum(fresh), users=users)

    def _write_profiles(self, served: ServedVersion, users: Sequence[str]) -> None:
        """Hand the updated profile points to the store: a server shares them with every
        process at once; Edge keeps published collections immutable and shares the log."""
        assert served.profiles is not None

        def points() -> tuple[list[PointId], np.ndarray, list[dict[str, Any]]]:
            ids, vectors, payloads = [], [], []
            for user in users:
                entries = self.entries(served, user)
                ids.append(point_id(*profile_key(self.dataset, user)))
                vectors.append(self._merged(served, entries))
                payloads.append({"user_id": user, "count": len(entries),
                                 "recent": [{"item_id": e[1], "ts": e[0]} for e in entries]})
            return ids, np.stack(vectors), payloads

        self.backend.write_live_profiles(served.profiles, points)

    # -- vectors -------------------------------------------------------------------------------
    def resolve(self, served: ServedVersion, request: RerankRequest) -> np.ndarray:
        """The unit vector a request is scored with (its user, history or given vector)."""
        given = [request.user_id is not None, request.history is not None,
                 request.vector is not None]
        if sum(given) != 1:
            raise InputError("give exactly one of user_id, history or vector", field="user")
        if request.user_id is not None:
            return self.user_vector(served, request.user_id)
        if request.history is not None:
            return self.history_vector(served, request.history)
        vector = np.asarray(request.vector, dtype=np.float32)
        norm = float(np.linalg.norm(vector)) if vector.ndim == 1 else 0.0
        if vector.ndim != 1 or not np.isfinite(norm) or norm == 0.0:
            raise InputError("vector must be a non-zero, finite 1-d array", field="vector")
        dim = served.fingerprint.dim if served.fingerprint is not None else None
        if dim is not None and vector.shape[0] != dim:
            raise InputError(f"has {vector.shape[0]} dimensions, the index has {dim}",
                             field="vector")
        return vector / norm

    def user_vector(self, served: ServedVersion, user_id: str) -> np.ndarray:
        """The user's decayed profile (stored point, plus live events), through the LRU."""
        self.poll(served)
        cached = served.users.get(user_id)
        if cached is not None:
            return cached
        if not served.profile_points:
            vector = self._scanned(served, user_id)
        elif user_id in served.live:
            vector = self._merged(served, self.entries(served, user_id))
        else:
            assert served.profiles is not None
            found = self.backend.retrieve_vectors(served.profiles,
                                                  [point_id(*profile_key(self.dataset, user_id))])
            if not found:
                raise self._unknown(user_id)
            vector = next(iter(found.values()))
        served.users.put(user_id, vector)
        return vector

    def entries(self, served: ServedVersion, user_id: str) -> list[Entry]:
        """The user's last n interactions, oldest first: indexed ones (from the profile point)
        and live ones; a live event wins over the indexed one of the same item and time."""
        entries: dict[tuple[str, float], Entry] = {}
        if served.profiles is not None:
            found = self.backend.retrieve_payloads(served.profiles,
                                                   [point_id(*profile_key(self.dataset, user_id))])
            for payload in found.values():
                for e in payload.get("recent") or []:
                    ts, item = float(e["ts"]), str(e["item_id"])
                    entries[(item, ts)] = (ts, item, point_id(
                        *interaction_key(self.dataset, user_id, item, ts)))
        for event in served.live.get(user_id, []):  # the log holds their vectors: it wins
            entries[(event.item_id, event.timestamp)] = (event.timestamp, event.item_id,
                                                         -event.seq)
        if not entries:
            raise self._unknown(user_id)
        return sorted(entries.values(), key=lambda e: (e[0], e[1]))[-self.query.last_n:]

    def _merged(self, served: ServedVersion, entries: Sequence[Entry]) -> np.ndarray:
        """Decayed mean over indexed interaction vectors and logged event vectors."""
        indexed = [e[2] for e in entries if not _is_live(e)]
        seqs = [-int(e[2]) for e in entries if _is_live(e)]
        vectors: dict[Any, np.ndarray] = {}
        if indexed and served.interactions:
            vectors.update(self.backend.retrieve_vectors(served.interactions, indexed))
        if seqs and self.events is not None:
            logged = self.events.vectors(seqs, _fp_key(served))
            vectors.update({-s: v for s, v in logged.items()})
        missing = [e for e in entries if e[2] not in vectors]
        if missing:
            raise NotFoundError(f"{len(missing)} interaction(s) of the profile have no vector "
                                "under the served encoder; re-index the dataset")
        return user_vector(np.stack([vectors[e[2]] for e in entries]),
                           gamma=self.query.gamma, last_n=self.query.last_n)

    def _scanned(self, served: ServedVersion, user_id: str) -> np.ndarray:
        """Profile from the interactions collection: versions without profile points, or a
        γ / n other than the one the profiles were built with."""
        if served.interactions is None:
            raise NotFoundError(f"dataset {self.dataset!r} has no interactions collection")
        records = list(self.backend.scroll(served.interactions, match=("user_id", user_id),
                                           with_vectors=True, payload_keys=["ts", "item_id"]))
        rows = [(float((r.payload or {}).get("ts", 0.0)), str((r.payload or {}).get("item_id")),
                 r.vector) for r in records if r.vector is not None]
        seen = {(item, ts) for ts, item, _ in rows}
        if self.events is not None and user_id in served.live:
            live = [e for e in served.live[user_id] if (e.item_id, e.timestamp) not in seen]
            logged = self.events.vectors([e.seq for e in live], _fp_key(served))
            rows += [(e.timestamp, e.item_id, logged[e.seq]) for e in live if e.seq in logged]
        if not rows:
            raise self._unknown(user_id)
        rows.sort(key=lambda r: (r[0], r[1]))
        return user_vector(np.stack([r[2] for r in rows]), gamma=self.query.gamma,
                           last_n=self.query.last_n)

    def history_vector(self, served: ServedVersion,
                       history: Sequence[Mapping[str, Any] | Interaction]) -> np.ndarray:
        """Embed raw interaction records on the fly (loads the encoder) and aggregate them."""
        interactions = [self._to_interaction(served, h, i) for i, h in enumerate(history)]
        if not interactions:
            raise InputError("history is empty", field="history")
        interactions.sort(key=lambda it: (it.timestamp, it.item_id))
        texts = [interaction_text(it) for it in interactions]
        return user_vector(encoder_for(served).encode(texts), gamma=self.query.gamma,
                           last_n=self.query.last_n)

    def _to_interaction(self, served: ServedVersion, record: Mapping[str, Any] | Interaction,
                        index: int) -> Interaction:
        if isinstance(record, Interaction):
            return record
        where = f"history[{index}]"
        item_id = record.get("item_id")
        if not item_id:
            raise InputError("missing required field", field=f"{where}.item_id")
        summary = record.get("item_summary") or record.get("summary") or ""
        if not summary:
            summary = self.summaries(served, [str(item_id)]).get(str(item_id), "")
        ts = record.get("timestamp")
        return Interaction(
            user_id=str(record.get("user_id") or ""), item_id=str(item_id),
            timestamp=parse_timestamp(index if ts is None else ts, "history", index + 1,
                                      f"{where}.timestamp"),
            rating=None, text=str(record.get("text") or record.get("review_text") or ""),
            aspects=record.get("aspects") or record.get("extracted"), item_summary=str(summary))

    # -- profiles ------------------------------------------------------------------------------
    def user_profile(self, served: ServedVersion, user_id: str) -> UserProfile:
        """The last n interactions a user's profile averages (oldest first)."""
        self.poll(served)
        if served.profiles is None:
            raise NotFoundError(f"dataset {self.dataset!r} was indexed without profiles; "
                                "re-index it")
        entries = self.entries(served, user_id)
        return UserProfile(user_id=user_id, live=sum(1 for e in entries if _is_live(e)),
                           version=served.version,
                           interactions=[ProfileEntry(item_id=e[1], timestamp=e[0])
                                         for e in entries])

    def summaries(self, served: ServedVersion, item_ids: Sequence[str]) -> dict[str, str]:
        """Item summaries of the served version, for encoding interactions with them."""
        if not served.summaries:
            return {}
        ids = {point_id(*summary_key(self.dataset, i)): i for i in dict.fromkeys(item_ids)}
        found = self.backend.retrieve_payloads(served.summaries, list(ids))
        return {ids[pid]: str(p.get("summary") or "") for pid, p in found.items() if pid in ids}

    def _unknown(self, user_id: str) -> UnknownUserError:
        return UnknownUserError(f"user {user_id!r} has no interactions in dataset "
                                f"{self.dataset!r}", user_id=user_id)


def encoder_for(served: ServedVersion) -> TextEncoder:
    """The serving encoder of a version, made on first use by the one factory (it finds the
    index's own encoder and refuses any other; the model loads on the first encode)."""
    if served.encoder is None:
        served.encoder = serving_encoder(served.encoder_settings, served.fingerprint,
                                         index_name=served.personas)
    return served.encoder


def _is_live(entry: Entry) -> bool:
    return isinstance(entry[2], int) and entry[2] < 0


def _live(entry: LiveInteraction | Mapping[str, Any], index: int) -> LiveInteraction:
    """Validate one live interaction; the error names ``interactions[i].field``."""
    if isinstance(entry, LiveInteraction):
        return entry
    try:
        return LiveInteraction.model_validate(entry)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(first["msg"], field=f"interactions[{index}].{where}") from None


def _fp_key(served: ServedVersion) -> str:
    """Event-log key of the served encoder's vectors (the embedding cache's partition key)."""
    return fingerprint_key(served.fingerprint) if served.fingerprint else "-"
