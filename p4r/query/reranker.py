"""Online reranking without an LLM: user vector → best persona per candidate item.

Nothing here imports torch at import time; an encoder is loaded only when text has to be
embedded on the fly (``history`` requests and live interactions).

A reranker serves from the collection version the aliases pointed at when it was built, even
after a re-index moves them (old versions stay until ``p4r-index prune``). Serving processes
call :meth:`Reranker.refresh` periodically or after a deploy to switch to the live version.

User profiles are points of the version's ``profiles`` collection (one retrieve), kept in a
bounded LRU. Live interactions are logged durably in the dataset's event log
(:mod:`p4r.datasets.events`) and applied on read, in every process that serves the dataset:
the next request of that user reflects them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from p4r.collections import catalog
from p4r.collections.base import Backend, GroupHit, PointId
from p4r.collections.naming import (
    alias_name,
    interaction_key,
    point_id,
    profile_key,
    summary_key,
)
from p4r.datasets.events import Event, EventLog
from p4r.datasets.models import Interaction
from p4r.encoder.cache import fingerprint_key
from p4r.encoder.fingerprint import Fingerprint
from p4r.encoder.profile import user_vector
from p4r.errors import (
    ConfigError,
    DamagedStoreError,
    InputError,
    NotFoundError,
    UnknownUserError,
)
from p4r.query.models import PAD, AddReport, LiveInteraction, ProfileEntry, UserProfile
from p4r.settings import EncoderSettings, QuerySettings

Explanation = Literal["persona", "summary", "unscored"]
MAXSIM_RATIO = 2  # score through the per-item MaxSim collection when k ≤ candidates / 2


@dataclass(slots=True)
class PersonaInfo:
    """The persona that explains a recommendation (slots, not frozen: one is made per
    explanation read from the store, and a frozen init costs ~5x more)."""

    persona_id: str
    name: str
    description: str
    rationale: str


@dataclass(slots=True)
class RankedItem:
    """One reranked candidate: its score and what explains it (slots, not frozen: one is made
    per returned item on the serving path, and a frozen init costs ~5x more)."""

    item_id: str
    score: float | None
    explanation: Explanation
    persona: PersonaInfo | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form: ``item_id``, ``score``, ``explanation``, ``persona`` (or null)."""
        p = self.persona  # built by hand: dataclasses.asdict deep-copies (~14x slower)
        return {"item_id": self.item_id, "score": self.score, "explanation": self.explanation,
                "persona": {"persona_id": p.persona_id, "name": p.name,
                            "description": p.description, "rationale": p.rationale}
                if p else None}


@dataclass
class RerankResult:
    """Ranked candidates (best first) and the candidate ids the index does not know."""

    items: list[RankedItem]
    unknown: list[str] = field(default_factory=list)
    user_id: str | None = None


@dataclass(frozen=True)
class RerankRequest:
    """One user's request: exactly one of ``user_id``, ``history`` or ``vector``."""

    candidates: Sequence[str]
    user_id: str | None = None
    history: Sequence[Mapping[str, Any] | Interaction] | None = None
    vector: np.ndarray | Sequence[float] | None = None
    k: int | None = None


class LRU:
    """A bounded, thread-safe least-recently-used map."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        return self.get_many((key,)).get(key)

    def put(self, key: Any, value: Any) -> None:
        self.put_many({key: value})

    def put_many(self, values: Mapping[Any, Any]) -> None:
        """Store several entries under one lock acquisition (most recent last)."""
        if not self.size:
            return
        data = self._data
        with self._lock:
            for key, value in values.items():
                data[key] = value
                data.move_to_end(key)
            while len(data) > self.size:
                data.popitem(last=False)

    def get_many(self, keys: Sequence[Any]) -> dict[Any, Any]:
        """The cached values of ``keys`` (absent ones left out), under one lock acquisition:
        the serving path looks up every returned item's explanation at once."""
        data = self._data
        found: dict[Any, Any] = {}
        with self._lock:
            for key in keys:
                value = data.get(key)
                if value is not None:
                    data.move_to_end(key)
                    found[key] = value
        return found

    def pop(self, key: Any) -> None:
        with self._lock:
            self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class _Served:
    """One index version a reranker answers from, with the caches that belong to it.

    Replaced as a whole by :meth:`Reranker.refresh`, so a request never mixes two versions.
    """

    version: int | None
    personas: str
    summaries: str | None
    interactions: str | None
    profiles: str | None
    items: str | None
    fingerprint: Fingerprint | None
    encoder_settings: EncoderSettings
    profile_params: tuple[float, int] | None
    log_seq: int
    users: LRU
    personas_lru: LRU
    encoder: Any = None
    live: dict[str, list[Event]] = field(default_factory=dict)
    polled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class UnknownCandidatesError(InputError):
    """Candidates that have neither personas nor a summary in the index."""

    def __init__(self, unknown: Sequence[str], dataset: str) -> None:
        shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
        super().__init__(f"{len(unknown)} candidate(s) unknown to dataset {dataset!r}: {shown}",
                         field="candidates")
        self.unknown = list(unknown)



class Reranker:
    """Scores candidate items for a user by their best-matching persona.

    Args:
        dataset: dataset name whose live index (aliases) to use.
        backend: the store holding it.
        query: γ and n of the user profile, and the cache sizes.
        encoder: settings of the encoder for ``history`` requests and live interactions; it is
            loaded (and its fingerprint checked against the index) only when text is encoded.
        check_encoder: kept for compatibility; the fingerprint is checked whenever text is
            embedded, and requests by user id or vector need no encoder at all.
        events: the dataset's event log; needed for :meth:`add_interactions`, and applied to
            profiles on read when given.
    """

    def __init__(
        self,
        dataset: str,
        backend: Backend,
        query: QuerySettings | None = None,
        encoder: EncoderSettings | None = None,
        *,
        check_encoder: bool = True,
        events: EventLog | None = None,
    ) -> None:
        self.dataset = dataset
        self.backend = backend
        self.query = query or QuerySettings()
        self.check_encoder = check_encoder
        self.events = events
        self._state = self._load(encoder or EncoderSettings())

    def _load(self, settings: EncoderSettings) -> _Served:
        """Resolve the aliases once (all from one read) and check the version is whole."""
        aliases = self.backend.get_aliases()
        personas = aliases.get(alias_name(self.dataset, "personas"))
        if personas is None:
            catalog.live_collection(self.backend, self.dataset, "personas")  # raises NotIndexed
            return self._load(settings)  # published in between: read the aliases again
        meta = self.backend.get_metadata(personas)
        self._verify_counts(aliases, meta)
        fingerprint = Fingerprint.from_dict(meta["encoder"]) if "encoder" in meta else None
        params = meta.get("profile")
        state = _Served(
            version=meta.get("version"), personas=personas,
            summaries=aliases.get(alias_name(self.dataset, "summaries")),
            interactions=aliases.get(alias_name(self.dataset, "interactions")),
            # Profile points are looked up by integer id: only id scheme 2 has them.
            profiles=aliases.get(alias_name(self.dataset, "profiles"))
            if int(meta.get("id_scheme") or 1) >= 2 else None,
            items=aliases.get(alias_name(self.dataset, "items")) if self.query.maxsim else None,
            fingerprint=fingerprint, encoder_settings=settings,
            profile_params=(float(params["gamma"]), int(params["last_n"])) if params else None,
            log_seq=int(meta.get("log_seq") or 0),
            users=LRU(self.query.profile_cache_size),
            personas_lru=LRU(self.query.persona_cache_size))
        state.polled = state.log_seq
        self._poll(state, force=True)
        return state

    def _verify_counts(self, aliases: dict[str, str], meta: dict[str, Any]) -> None:
        """Refuse to serve a version whose collections do not hold what was recorded (a
        damaged store would otherwise answer with missing explanations)."""
        for kind, recorded in (meta.get("counts") or {}).items():
            name = aliases.get(alias_name(self.dataset, kind))
            if name is None:
                continue
            stored = self.backend.count(name)
            if stored != int(recorded):
                raise DamagedStoreError(
                    f"{name} holds {stored} points, {recorded} were recorded; run "
                    f"`p4r-index check --dataset {self.dataset}`, then "
                    f"`p4r-index upsert --dataset {self.dataset}` to rebuild it")

    def refresh(self, encoder: EncoderSettings | None = None) -> bool:
        """Switch to the version the aliases point at now, if it changed; True if it switched.

        The new version is resolved and checked completely before one reference swap, so
        requests running meanwhile finish on the old version and later ones use the new one;
        caches start empty because vectors and payloads belong to a version.

        Raises:
            DamagedStoreError: the new version does not hold what was recorded; the reranker
                stays on its version.
            NotFoundError: the dataset's aliases were removed.
        """
        current = self._state
        target = self.backend.get_aliases().get(alias_name(self.dataset, "personas"))
        if target == current.personas:
            return False
        fresh = self._load(encoder or current.encoder_settings)
        if fresh.personas == current.personas:
            return False
        self._state = fresh  # one reference: a request sees the old state or the new one
        return True

    # The served version's parts, read through the current state.
    @property
    def version(self) -> int | None:
        """Version number this reranker answers from."""
        return self._state.version

    @property
    def personas(self) -> str:
        """Personas collection (versioned name) this reranker answers from."""
        return self._state.personas

    @property
    def summaries(self) -> str | None:
        """Summaries collection of the served version, if any."""
        return self._state.summaries

    @property
    def interactions(self) -> str | None:
        """Interactions collection of the served version, if any."""
        return self._state.interactions

    @property
    def fingerprint(self) -> Fingerprint | None:
        """Encoder fingerprint stored with the served version."""
        return self._state.fingerprint

    @property
    def encoder_settings(self) -> EncoderSettings:
        """Encoder settings used for ``history`` requests on the served version."""
        return self._state.encoder_settings

    @property
    def cached_profiles(self) -> int:
        """How many user profiles the bounded cache holds now."""
        return len(self._state.users)

    # -- live events ---------------------------------------------------------------------------
    def _poll(self, state: _Served, *, force: bool = False) -> None:
        """Apply events other processes (or this one) logged since the last look."""
        if self.events is None or not (force or self.events.changed()):
            return
        with state.lock:
            for event in self.events.since(state.polled):
                if event.seq > state.log_seq:
                    state.live.setdefault(event.user_id, []).append(event)
                    state.users.pop(event.user_id)
                state.polled = max(state.polled, event.seq)

    def add_interactions(
        self, interactions: Sequence[LiveInteraction | Mapping[str, Any]]
    ) -> AddReport:
        """Log new interactions durably, then make the users' next requests reflect them.

        Each is encoded with the serving encoder (torch or ONNX), appended to the event log
        (fsynced) and applied to the user's profile; the same user, item and time again is a
        no-op. ``p4r-index upsert`` folds the log into the next version.
        """
        if self.events is None:
            raise ConfigError("live interactions need the dataset's event log "
                              "(open the reranker with p4r.query.service.open_reranker)")
        state = self._state
        rows = [_live(entry, i) for i, entry in enumerate(interactions)]
        if not rows:
            raise InputError("no interactions given", field="interactions")
        summaries = self._summaries(state, [r.item_id for r in rows])
        for i, row in enumerate(rows):
            if row.item_id not in summaries and not (row.text or row.aspects):
                raise InputError(f"item {row.item_id!r} is unknown to dataset {self.dataset!r}; "
                                 "give its text or aspects", field=f"interactions[{i}].item_id")
        from p4r.encoder.templates import interaction_text

        texts = [interaction_text(Interaction(
            user_id=r.user_id, item_id=r.item_id, timestamp=r.timestamp, rating=r.rating,
            text=r.text, aspects=r.aspects, item_summary=summaries.get(r.item_id, "")))
            for r in rows]
        encoder = self._get_encoder(state)
        fresh = self.events.append([r.model_dump() for r in rows], encoder.encode(texts),
                                   _fp_key(state))
        self._poll(state, force=True)
        users = sorted({r.user_id for r in rows})
        if self.backend.kind == "server" and state.profiles:  # a server shares writes at once
            self._write_profiles(state, users)
        return AddReport(accepted=sum(fresh), duplicates=len(fresh) - sum(fresh), users=users)

    def _write_profiles(self, state: _Served, users: Sequence[str]) -> None:
        """Store the updated profile points (server backend: every process reads them)."""
        assert state.profiles is not None
        ids, vectors, payloads = [], [], []
        for user in users:
            entries = self._profile_entries(state, user)
            ids.append(point_id(*profile_key(self.dataset, user)))
            vectors.append(self._merged_vector(state, entries))
            payloads.append({"user_id": user, "count": len(entries),
                             "recent": [{"item_id": e[1], "ts": e[0]} for e in entries]})
        self.backend.upsert(state.profiles, ids, np.stack(vectors), payloads)

    # -- user vectors --------------------------------------------------------------------------
    def user_vector(self, user_id: str) -> np.ndarray:
        """The user's decayed profile (stored point, plus live events), through the LRU."""
        return self._user_vector(self._state, user_id)

    def _params(self) -> tuple[float, int]:
        return float(self.query.gamma), int(self.query.last_n)

    def _user_vector(self, state: _Served, user_id: str) -> np.ndarray:
        self._poll(state)
        cached = state.users.get(user_id)
        if cached is not None:
            return cached
        if state.profiles is None or state.profile_params != self._params():
            vector = self._scan_user_vector(state, user_id)
        elif user_id in state.live:
            vector = self._merged_vector(state, self._profile_entries(state, user_id))
        else:
            found = self.backend.retrieve_vectors(state.profiles,
                                                  [point_id(*profile_key(self.dataset, user_id))])
            if not found:
                raise UnknownUserError(
                    f"user {user_id!r} has no interactions in dataset {self.dataset!r}",
                    user_id=user_id)
            vector = next(iter(found.values()))
        state.users.put(user_id, vector)
        return vector

    def _profile_entries(
        self, state: _Served, user_id: str
    ) -> list[tuple[float, str, PointId | int]]:
        """(ts, item_id, source) of the user's last n interactions, oldest first: indexed ones
        (source = interaction point id) and live ones (source = -event seq)."""
        entries: dict[tuple[str, float], tuple[float, str, PointId | int]] = {}
        if state.profiles is not None:
            found = self.backend.retrieve_payloads(state.profiles,
                                                   [point_id(*profile_key(self.dataset, user_id))])
            for payload in found.values():
                for e in payload.get("recent") or []:
                    ts, item = float(e["ts"]), str(e["item_id"])
                    entries[(item, ts)] = (ts, item, point_id(
                        *interaction_key(self.dataset, user_id, item, ts)))
        for event in state.live.get(user_id, []):  # the log holds their vectors: it wins
            entries[(event.item_id, event.timestamp)] = (event.timestamp, event.item_id,
                                                         -event.seq)
        if not entries:
            raise UnknownUserError(f"user {user_id!r} has no interactions in dataset "
                                   f"{self.dataset!r}", user_id=user_id)
        return sorted(entries.values(), key=lambda e: (e[0], e[1]))[-self.query.last_n:]

    def _merged_vector(
        self, state: _Served, entries: Sequence[tuple[float, str, PointId | int]]
    ) -> np.ndarray:
        """Decayed mean over indexed interaction vectors and logged event vectors."""
        indexed = [e[2] for e in entries if not (isinstance(e[2], int) and e[2] < 0)]
        seqs = [-int(e[2]) for e in entries if isinstance(e[2], int) and e[2] < 0]
        vectors: dict[Any, np.ndarray] = {}
        if indexed and state.interactions:
            vectors.update(self.backend.retrieve_vectors(state.interactions, indexed))
        if seqs and self.events is not None:
            logged = self.events.vectors(seqs, _fp_key(state))
            vectors.update({-s: v for s, v in logged.items()})
        missing = [e for e in entries if e[2] not in vectors]
        if missing:
            raise NotFoundError(f"{len(missing)} interaction(s) of the profile have no vector "
                                "under the served encoder; re-index the dataset")
        matrix = np.stack([vectors[e[2]] for e in entries])
        gamma, last_n = self._params()
        return user_vector(matrix, gamma=gamma, last_n=last_n)

    def _scan_user_vector(self, state: _Served, user_id: str) -> np.ndarray:
        """Profile from the interactions collection: versions without profile points, or a
        γ / n other than the one the profiles were built with."""
        if state.interactions is None:
            raise NotFoundError(f"dataset {self.dataset!r} has no interactions collection")
        records = list(self.backend.scroll(state.interactions, match=("user_id", user_id),
                                           with_vectors=True, payload_keys=["ts", "item_id"]))
        rows = [(float((r.payload or {}).get("ts", 0.0)), str((r.payload or {}).get("item_id")),
                 r.vector) for r in records if r.vector is not None]
        seen = {(item, ts) for ts, item, _ in rows}
        if self.events is not None and user_id in state.live:
            live = [e for e in state.live[user_id] if (e.item_id, e.timestamp) not in seen]
            logged = self.events.vectors([e.seq for e in live], _fp_key(state))
            rows += [(e.timestamp, e.item_id, logged[e.seq]) for e in live if e.seq in logged]
        if not rows:
            raise UnknownUserError(
                f"user {user_id!r} has no interactions in dataset {self.dataset!r}",
                user_id=user_id)
        rows.sort(key=lambda r: (r[0], r[1]))
        gamma, last_n = self._params()
        return user_vector(np.stack([r[2] for r in rows]), gamma=gamma, last_n=last_n)

    def user_profile(self, user_id: str) -> UserProfile:
        """The last n interactions a user's profile averages (oldest first)."""
        state = self._state
        self._poll(state)
        if state.profiles is None:
            raise NotFoundError(f"dataset {self.dataset!r} was indexed without profiles; "
                                "re-index it")
        entries = self._profile_entries(state, user_id)
        live = sum(1 for e in entries if isinstance(e[2], int) and e[2] < 0)
        return UserProfile(user_id=user_id, live=live, version=state.version,
                           interactions=[ProfileEntry(item_id=e[1], timestamp=e[0])
                                         for e in entries])

    def item_personas(self, item_id: str) -> list[PersonaInfo]:
        """Every persona of an item, by persona id."""
        records = self.backend.scroll(self._state.personas, match=("item_id", item_id))
        found = sorted((_persona_info(r.payload or {}) for r in records),
                       key=lambda p: p.persona_id)
        if not found:
            raise NotFoundError(f"item {item_id!r} has no personas in dataset {self.dataset!r}")
        return found

    def history_vector(self, history: Sequence[Mapping[str, Any] | Interaction]) -> np.ndarray:
        """Embed raw interaction records on the fly (loads the encoder) and aggregate them."""
        return self._history_vector(self._state, history)

    def _history_vector(
        self, state: _Served, history: Sequence[Mapping[str, Any] | Interaction]
    ) -> np.ndarray:
        from p4r.encoder.templates import interaction_text

        interactions = [self._to_interaction(state, h, i) for i, h in enumerate(history)]
        if not interactions:
            raise InputError("history is empty", field="history")
        interactions.sort(key=lambda it: (it.timestamp, it.item_id))
        texts = [interaction_text(it) for it in interactions]
        return user_vector(self._get_encoder(state).encode(texts), gamma=self.query.gamma,
                           last_n=self.query.last_n)

    def _get_encoder(self, state: _Served) -> Any:
        """The serving encoder, loaded on first use and checked against the index.

        Torch serving finds the index's own encoder: the configured model if it matches the
        recorded fingerprint, else the folder the index recorded it was built from; an ONNX
        export must carry the index's fingerprint.
        """
        if state.encoder is None:
            settings = state.encoder_settings
            encoder: Any
            if settings.backend == "onnx":  # torch-free serving
                from p4r.encoder.serving import OnnxEncoder

                encoder = OnnxEncoder(settings=settings)
            else:
                from p4r.encoder.fingerprint import locate_encoder
                from p4r.encoder.model import Encoder

                model = settings.model if state.fingerprint is None else locate_encoder(
                    state.fingerprint, settings.model, settings.max_seq_length)
                encoder = Encoder(settings.model_copy(update={"model": model}))
            # Always checked: text embedded by another encoder would rank garbage.
            if state.fingerprint is not None and not state.fingerprint.accepts(
                    encoder.fingerprint):
                raise ConfigError(
                    f"encoder fingerprint mismatch: {state.personas} was built with "
                    f"{state.fingerprint.short()}, but the configured encoder is "
                    f"{encoder.fingerprint.short()}; set P4R_ENCODER__MODEL to the indexing "
                    "encoder or re-index with this one")
            state.encoder = encoder
        return state.encoder

    def _summaries(self, state: _Served, item_ids: Sequence[str]) -> dict[str, str]:
        """Item summaries of the served version, for encoding interactions with them."""
        if not state.summaries:
            return {}
        ids = {point_id(*summary_key(self.dataset, i)): i for i in dict.fromkeys(item_ids)}
        found = self.backend.retrieve_payloads(state.summaries, list(ids))
        return {ids[pid]: str(p.get("summary") or "") for pid, p in found.items() if pid in ids}

    def _to_interaction(
        self, state: _Served, record: Mapping[str, Any] | Interaction, index: int
    ) -> Interaction:
        if isinstance(record, Interaction):
            return record
        from p4r.datasets.jsonl import parse_timestamp

        where = f"history[{index}]"
        item_id = record.get("item_id")
        if not item_id:
            raise InputError("missing required field", field=f"{where}.item_id")
        summary = record.get("item_summary") or record.get("summary") or ""
        if not summary:
            summary = self._summaries(state, [str(item_id)]).get(str(item_id), "")
        ts = record.get("timestamp")
        return Interaction(
            user_id=str(record.get("user_id") or ""), item_id=str(item_id),
            timestamp=parse_timestamp(index if ts is None else ts, "history", index + 1,
                                      f"{where}.timestamp"),
            rating=None, text=str(record.get("text") or record.get("review_text") or ""),
            aspects=record.get("aspects") or record.get("extracted"), item_summary=str(summary))

    def _resolve_vector(self, state: _Served, request: RerankRequest) -> np.ndarray:
        given = [request.user_id is not None, request.history is not None,
                 request.vector is not None]
        if sum(given) != 1:
            raise InputError("give exactly one of user_id, history or vector", field="user")
        if request.user_id is not None:
            return self._user_vector(state, request.user_id)
        if request.history is not None:
            return self._history_vector(state, request.history)
        vector = np.asarray(request.vector, dtype=np.float32)
        norm = float(np.linalg.norm(vector)) if vector.ndim == 1 else 0.0
        if vector.ndim != 1 or not np.isfinite(norm) or norm == 0.0:
            raise InputError("vector must be a non-zero, finite 1-d array", field="vector")
        if state.fingerprint is not None and vector.shape[0] != state.fingerprint.dim:
            raise InputError(f"vector has {vector.shape[0]} dimensions, the index "
                             f"{state.fingerprint.dim}", field="vector")
        return vector / norm

    # -- reranking -----------------------------------------------------------------------------
    def rerank(
        self,
        *,
        candidates: Sequence[str],
        user_id: str | None = None,
        history: Sequence[Mapping[str, Any] | Interaction] | None = None,
        vector: np.ndarray | Sequence[float] | None = None,
        k: int | None = None,
        on_unknown: Literal["error", "keep"] = "error",
    ) -> RerankResult:
        """Rerank ``candidates`` for one user; see :meth:`rerank_batch`."""
        request = RerankRequest(candidates=candidates, user_id=user_id, history=history,
                                vector=vector, k=k)
        return self.rerank_batch([request], on_unknown=on_unknown)[0]

    def rerank_batch(
        self,
        requests: Sequence[RerankRequest],
        *,
        on_unknown: Literal["error", "keep"] = "error",
    ) -> list[RerankResult]:
        """Rerank many users' candidates in one call (batched engine queries).

        Items are ordered by score (ties by item id): the best persona's cosine, or the
        summary's cosine for items without personas. Candidates the index does not know keep
        their input order at the end as ``unscored`` when ``on_unknown="keep"``; with
        ``"error"`` they raise :class:`UnknownCandidatesError`. ``[PAD]`` entries are skipped.
        With ``k`` below the candidate count the engine is asked for just enough persona
        points to hold the k best items (or, on a version built with the per-item MaxSim
        collection, items are scored through it when k ≤ candidates / 2); the answer is the
        same.
        """
        if not requests:
            return []
        state = self._state  # read once: a concurrent refresh() cannot mix two versions
        vectors = np.stack([self._resolve_vector(state, r) for r in requests])
        wanted = [list(dict.fromkeys([c for c in r.candidates if c and c != PAD]))
                  for r in requests]
        for r in requests:
            if r.k is not None and r.k < 1:
                raise InputError("k must be at least 1", field="k")
        maxsim = [state.items is not None and r.k is not None
                  and r.k * MAXSIM_RATIO <= len(w) for r, w in zip(requests, wanted, strict=True)]
        persona_hits = self._persona_hits(state, vectors, wanted, requests, maxsim)
        summary_hits = self._summary_hits(state, vectors, wanted, persona_hits, maxsim)
        ranked_lists: list[list[tuple[GroupHit | None, Explanation, str]]] = []
        unknowns: list[list[str]] = []
        for request, cands, p_hits, s_hits in zip(requests, wanted, persona_hits, summary_hits,
                                                  strict=True):
            scored: list[tuple[GroupHit | None, Explanation, str]] = [
                (h, "persona", h.group) for h in p_hits[0]]
            if s_hits:  # persona hits alone come back in this order already
                scored += [(h, "summary", h.group) for h in s_hits]
                scored.sort(key=lambda row: (-row[0].score, row[2]))  # type: ignore[union-attr]
            known = p_hits[1] | {h.group for h in s_hits}
            unknown = [c for c in cands if c not in known]
            if unknown and on_unknown == "error":
                raise UnknownCandidatesError(unknown, self.dataset)
            ranked = scored + [(None, "unscored", c) for c in unknown]
            ranked_lists.append(ranked[:request.k] if request.k is not None else ranked)
            unknowns.append(unknown)
        self._explain_maxsim(state, vectors, ranked_lists, maxsim)
        personas = self._persona_payloads(state, ranked_lists)
        return [
            RerankResult(
                items=[RankedItem(item_id, float(hit.score) if hit is not None else None, kind,
                                  personas.get(hit.point_id) if hit else None)
                       for hit, kind, item_id in ranked],
                unknown=unknown, user_id=request.user_id)
            for request, ranked, unknown in zip(requests, ranked_lists, unknowns, strict=True)
        ]

    def _persona_hits(
        self, state: _Served, vectors: np.ndarray, wanted: list[list[str]],
        requests: Sequence[RerankRequest], maxsim: list[bool],
    ) -> list[tuple[list[GroupHit], set[str]]]:
        """Per request: the scored persona items, and every candidate that has personas.

        MaxSim rows return only the top k items; which candidates have personas comes from
        the items collection's membership, so the summary fallback stays the same.
        """
        out: list[tuple[list[GroupHit], set[str]]] = [([], set()) for _ in requests]
        plain = [i for i, m in enumerate(maxsim) if not m]
        if plain:
            # A top k below the candidates asks the engine for a bounded number of points (see
            # top_groups_bound) where the backend knows each candidate's personas in memory.
            bound = self.backend.groups_in_memory
            limits = [requests[i].k if bound and requests[i].k is not None
                      and requests[i].k < len(wanted[i]) else None for i in plain]
            hits = self.backend.best_per_group(state.personas, vectors[plain],
                                               [wanted[i] for i in plain], limits=limits)
            for i, limit, answer in zip(plain, limits, hits, strict=True):
                have = {h.group for h in answer} if limit is None else \
                    self.backend.groups_present(state.personas, wanted[i])
                out[i] = (answer, have)
        fast = [i for i, m in enumerate(maxsim) if m]
        if fast and state.items:
            present = [self.backend.groups_present(state.items, wanted[i]) for i in fast]
            hits = self.backend.best_per_group(
                state.items, vectors[fast], [sorted(p) for p in present],
                limits=[requests[i].k for i in fast])
            for i, have, answer in zip(fast, present, hits, strict=True):
                out[i] = (answer, have)
        return out

    def _summary_hits(
        self, state: _Served, vectors: np.ndarray, wanted: list[list[str]],
        persona_hits: list[tuple[list[GroupHit], set[str]]], maxsim: list[bool],
    ) -> list[list[GroupHit]]:
        """Summary scores of the candidates that have no personas (cold-start fallback)."""
        missing = [[c for c in cands if c not in have]
                   for cands, (_, have) in zip(wanted, persona_hits, strict=True)]
        summary_hits: list[list[GroupHit]] = [[] for _ in wanted]
        rows = [i for i, m in enumerate(missing) if m]
        if state.summaries and rows:
            answers = self.backend.best_per_group(state.summaries, vectors[rows],
                                                  [missing[i] for i in rows])
            for i, answer in zip(rows, answers, strict=True):
                summary_hits[i] = answer
        return summary_hits

    def _explain_maxsim(
        self, state: _Served, vectors: np.ndarray,
        ranked_lists: list[list[tuple[GroupHit | None, Explanation, str]]], maxsim: list[bool],
    ) -> None:
        """Replace MaxSim item hits by the winning persona of each returned item (a second,
        small persona query over the top k only); scores come from that query, as in the
        plain path."""
        rows = [i for i, m in enumerate(maxsim) if m]
        if not rows:
            return
        groups = [[item for hit, kind, item in ranked_lists[i] if kind == "persona"]
                  for i in rows]
        answers = self.backend.best_per_group(state.personas, vectors[rows], groups)
        for i, answer in zip(rows, answers, strict=True):
            best = {h.group: h for h in answer}
            ranked = [(best.get(item, hit), kind, item) if kind == "persona" else
                      (hit, kind, item) for hit, kind, item in ranked_lists[i]]
            scored = [r for r in ranked if r[0] is not None]
            scored.sort(key=lambda row: (-row[0].score, row[2]))  # type: ignore[union-attr]
            ranked_lists[i] = scored + [r for r in ranked if r[0] is None]

    def _persona_payloads(
        self, state: _Served, ranked_lists: list[list[tuple[GroupHit | None, Explanation, str]]]
    ) -> dict[PointId, PersonaInfo]:
        """Persona details for the returned persona hits only, through a bounded LRU cache.

        Payload stays off the hot path: the engine query returns ids and scores, and only the
        winning personas of returned items are read (popular items come from memory).
        """
        cache = state.personas_lru
        hits = [hit for ranked in ranked_lists for hit, kind, _ in ranked
                if kind == "persona" and hit is not None]
        found: dict[PointId, PersonaInfo] = cache.get_many([hit.point_id for hit in hits])
        need: list[PointId] = []
        for hit in hits:
            if hit.point_id in found:
                continue
            if hit.payload is not None:
                found[hit.point_id] = _persona_info(hit.payload)
            else:
                need.append(hit.point_id)
        if need:
            read = {pid: _persona_info(payload or {}) for pid, payload in
                    self.backend.retrieve_payloads(state.personas, need).items()}
            cache.put_many(read)
            found.update(read)
        return found


def _persona_info(payload: Mapping[str, Any]) -> PersonaInfo:
    try:  # the indexer stores all four as strings: the fast path on every explanation read
        return PersonaInfo(payload["persona_id"], payload["name"], payload["description"],
                           payload["rationale"])
    except KeyError:
        return PersonaInfo(str(payload.get("persona_id", "")), str(payload.get("name", "")),
                           str(payload.get("description", "")),
                           str(payload.get("rationale", "")))


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


def _fp_key(state: _Served) -> str:
    """Event-log key of the served encoder's vectors (the embedding cache's partition key)."""
    return fingerprint_key(state.fingerprint) if state.fingerprint else "-"
