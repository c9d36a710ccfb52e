"""User vectors: stored profiles, live interactions, raw histories, and forgetting.

A user's vector is the decayed mean of their last n interaction embeddings. For a known user
it is their profile in the user state of the served version's encoder (one read for a whole
batch); a live interaction is written to that user state and the profile is updated before
the call returns, so the next request on any process or host reflects it. ``history``
requests embed raw interactions with the serving encoder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from p4r.datasets.jsonl import parse_timestamp
from p4r.datasets.models import Interaction
from p4r.encoder.base import TextEncoder
from p4r.encoder.cache import text_hash
from p4r.encoder.factory import serving_encoder
from p4r.encoder.profile import user_vector
from p4r.encoder.templates import interaction_text
from p4r.errors import ConfigError, ForgottenUserError, InputError, P4RError, UnknownUserError
from p4r.query.binding import ServedVersion
from p4r.query.calls import Call, Steps, run
from p4r.query.models import AddReport, LiveInteraction, ProfileEntry, UserProfile
from p4r.query.results import RerankRequest
from p4r.settings import QuerySettings
from p4r.store.base import Backend
from p4r.store.naming import point_id, summary_key
from p4r.store.users import ForgetReport, InteractionRecord, Profile, UserStore


@dataclass(frozen=True)
class UserInput:
    """What a request knows of its user.

    Attributes:
        vector: the unit profile vector (the decayed mean of ``history``, or the given vector).
        history: ``(L, d)`` the last n interaction vectors, oldest first; None for a
            ``vector`` request.
        recent: ``(item_id, timestamp)`` of each history row.
    """

    vector: np.ndarray
    history: np.ndarray | None = None
    recent: tuple[tuple[str, float], ...] = ()


class UserVectors:
    """Resolves the vectors of a batch's users, records live interactions, forgets users.

    Args:
        dataset: the dataset served.
        backend: the store (for item summaries of the served version).
        query: γ and n of the profile this reranker scores with.
    """

    def __init__(self, dataset: str, backend: Backend, query: QuerySettings) -> None:
        self.dataset = dataset
        self.backend = backend
        self.query = query

    # -- vectors -------------------------------------------------------------------------------
    def resolve(self, served: ServedVersion, requests: Sequence[RerankRequest], *,
                with_history: bool = True) -> Steps[list[UserInput]]:
        """What each request knows of its user (its user, history or given vector); the
        profiles of every ``user_id`` request are read at once, ``with_history`` with the
        vectors of their recent interactions (a yielded step, see :mod:`p4r.query.calls`).
        A refusal names the request's index."""
        users = [r.user_id for r in requests if r.user_id is not None]
        profiles = (yield from self._inputs(served, users, with_history)) if users else {}
        out = []
        for index, request in enumerate(requests):
            try:
                out.append(self._one(served, request, profiles))
            except P4RError as exc:  # unknown user, bad vector, bad history: which request
                exc.request_index = index
                raise
        return out

    def _one(self, served: ServedVersion, request: RerankRequest,
             profiles: Mapping[str, UserInput]) -> UserInput:
        given = [request.user_id is not None, request.history is not None,
                 request.vector is not None]
        if sum(given) != 1:
            raise InputError("give exactly one of user_id, history or vector", field="user")
        if request.user_id is not None:
            if request.user_id not in profiles:
                raise self._unknown(request.user_id)
            return profiles[request.user_id]
        if request.history is not None:
            return self.history_input(served, request.history)
        vector = np.asarray(request.vector, dtype=np.float32)
        # What np.linalg.norm computes for a 1-d array, without its checks (~3 µs a request).
        norm = float(np.sqrt(vector.dot(vector))) if vector.ndim == 1 else 0.0
        if vector.ndim != 1 or not math.isfinite(norm) or norm == 0.0:
            raise InputError("vector must be a non-zero, finite 1-d array", field="vector")
        dim = served.fingerprint.dim if served.fingerprint is not None else None
        if dim is not None and vector.shape[0] != dim:
            raise InputError(f"has {vector.shape[0]} dimensions, the index has {dim}",
                             field="vector")
        return UserInput(vector / norm)

    def user_vector(self, served: ServedVersion, user_id: str) -> np.ndarray:
        """The user's decayed profile vector (404-class error for an unknown user)."""
        found = run(self._profiles(served, [user_id]))
        if user_id not in found:
            raise self._unknown(user_id)
        return found[user_id]

    def _profiles(self, served: ServedVersion,
                  users: Sequence[str]) -> Steps[dict[str, np.ndarray]]:
        """Profile vectors of the users that have one, scored with this reranker's γ and n
        (recomputed from the interaction vectors when the stored profile used others)."""
        store = self._store(served)
        out: dict[str, np.ndarray] = {}
        profiles: dict[str, Profile] = yield Call(store, "profiles", (users,))
        for user, profile in profiles.items():
            out[user] = profile.vector if profile.params == self.query.profile else \
                (yield from self._recomputed(store, profile))
        return out

    def _recomputed(self, store: UserStore, profile: Profile) -> Steps[np.ndarray]:
        n = self.query.last_n
        if n <= len(profile.recent) or len(profile.recent) == profile.count:
            keys = [e.key for e in profile.recent][-n:]
        else:
            history = yield Call(store, "interactions", (profile.user_id,))
            keys = [r.key(self.dataset) for r in history][-n:]
        vectors = yield Call(store, "vectors", (keys,))
        return user_vector(np.stack([vectors[k] for k in keys if k in vectors]),
                           gamma=self.query.gamma, last_n=n)

    def _inputs(self, served: ServedVersion, users: Sequence[str],
                with_history: bool) -> Steps[dict[str, UserInput]]:
        """Each user's profile vector (with this reranker's γ and n) and, ``with_history``,
        their last n interaction vectors, oldest first: one read of the profiles with their
        recent vectors; a stored profile shorter than this reranker's n (another n) reads the
        user's history too."""
        if not with_history:
            vectors = yield from self._profiles(served, users)
            return {user: UserInput(vector) for user, vector in vectors.items()}
        store = self._store(served)
        profiles: dict[str, Profile] = yield Call(store, "profiles", (users,),
                                                  {"with_recent": True})
        n = self.query.last_n
        out: dict[str, UserInput] = {}
        for user, profile in profiles.items():
            vectors = profile.recent_vectors or {}
            entries = [(e.key, e.item_id, e.timestamp) for e in profile.recent[-n:]]
            if n > len(profile.recent) and len(profile.recent) < profile.count:
                history = yield Call(store, "interactions", (user,))
                entries = [(r.key(self.dataset), r.item_id, r.timestamp) for r in history][-n:]
                vectors = yield Call(store, "vectors", ([key for key, _, _ in entries],))
            entries = [e for e in entries if e[0] in vectors]
            if not entries:  # no vector under this encoder (yet): the profile alone
                out[user] = UserInput(profile.vector)
                continue
            rows = np.array([vectors[key] for key, _, _ in entries], dtype=np.float32)
            vector = profile.vector if profile.params == self.query.profile else \
                user_vector(rows, gamma=self.query.gamma, last_n=n)
            out[user] = UserInput(vector, rows, tuple((item, ts) for _, item, ts in entries))
        return out

    def history_vector(self, served: ServedVersion,
                       history: Sequence[Mapping[str, Any] | Interaction]) -> np.ndarray:
        """Embed raw interaction records on the fly (loads the encoder) and aggregate them."""
        return self.history_input(served, history).vector

    def history_input(self, served: ServedVersion,
                      history: Sequence[Mapping[str, Any] | Interaction]) -> UserInput:
        """Embed raw interaction records on the fly (loads the encoder): their decayed mean
        and the last n rows, oldest first (ties by item id)."""
        interactions = [self._to_interaction(served, h, i) for i, h in enumerate(history)]
        if not interactions:
            raise InputError("history is empty", field="history")
        interactions.sort(key=lambda it: (it.timestamp, it.item_id))
        interactions = interactions[-self.query.last_n:]
        rows = encoder_for(served).encode([interaction_text(it) for it in interactions])
        return UserInput(user_vector(rows, gamma=self.query.gamma, last_n=self.query.last_n),
                         np.asarray(rows, dtype=np.float32),
                         tuple((it.item_id, float(it.timestamp)) for it in interactions))

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

    # -- live interactions ---------------------------------------------------------------------
    def add_interactions(self, served: ServedVersion,
                         interactions: Sequence[LiveInteraction | Mapping[str, Any]]
                         ) -> AddReport:
        """Record new interactions durably in the user state and update the users' profiles
        before returning: the next request of those users, on any process, reflects them.

        Each is embedded with the serving encoder (torch or ONNX) from its text or aspects and
        the item's summary; the same user, item and time again is a no-op. Forgotten users are
        refused.
        """
        rows = [_live(entry, i) for i, entry in enumerate(interactions)]
        if not rows:
            raise InputError("no interactions given", field="interactions")
        store = self._store(served)
        for i, row in enumerate(rows):
            if store.forgotten(row.user_id):
                raise ForgottenUserError(
                    f"user {row.user_id!r} was forgotten in dataset {self.dataset!r}; their "
                    "interactions are not recorded", field=f"interactions[{i}].user_id")
        summaries = self.summaries(served, [r.item_id for r in rows])
        for i, row in enumerate(rows):
            if row.item_id not in summaries and not (row.text or row.aspects):
                raise InputError(f"item {row.item_id!r} is unknown to dataset {self.dataset!r}; "
                                 "give its text or aspects", field=f"interactions[{i}].item_id")
        texts = [interaction_text(Interaction(
            user_id=r.user_id, item_id=r.item_id, timestamp=r.timestamp, rating=r.rating,
            text=r.text, aspects=r.aspects, item_summary=summaries.get(r.item_id, "")))
            for r in rows]
        records = [InteractionRecord(user_id=r.user_id, item_id=r.item_id,
                                     timestamp=r.timestamp, rating=r.rating, text=r.text,
                                     aspects=r.aspects, origin="live", text_hash=text_hash(t))
                   for r, t in zip(rows, texts, strict=True)]
        fresh = store.record(records, encoder_for(served).encode(texts))
        users = sorted({r.user_id for r in rows})
        return AddReport(accepted=sum(fresh), duplicates=len(fresh) - sum(fresh), users=users)

    def forget(self, served: ServedVersion, user_id: str) -> ForgetReport:
        """Delete the user's interactions and profile and remember them as forgotten."""
        return self._store(served).forget(user_id)

    # -- profiles ------------------------------------------------------------------------------
    def user_profile(self, served: ServedVersion, user_id: str) -> Steps[UserProfile]:
        """The last n interactions a user's profile averages (oldest first); a yielded step."""
        found: dict[str, Profile] = yield Call(self._store(served), "profiles", ([user_id],))
        profile = found.get(user_id)
        if profile is None:
            raise self._unknown(user_id)
        recent = profile.recent[-self.query.last_n:]
        return UserProfile(user_id=user_id, live=sum(1 for e in recent if e.live),
                           version=served.version,
                           interactions=[ProfileEntry(item_id=e.item_id, timestamp=e.timestamp)
                                         for e in recent])

    def summaries(self, served: ServedVersion, item_ids: Sequence[str]) -> dict[str, str]:
        """Item summaries of the served version, for encoding interactions with them."""
        view = served.views.get("summaries")
        if view is None:
            return {}
        ids = {point_id(*summary_key(self.dataset, i)): i for i in dict.fromkeys(item_ids)}
        found = self.backend.retrieve_payloads(view.primary, list(ids))
        rest = [pid for pid in ids if pid not in found and ids[pid] not in view.masked]
        if rest and view.base is not None:
            found.update(self.backend.retrieve_payloads(view.base, rest))
        return {ids[pid]: str(p.get("summary") or "") for pid, p in found.items() if pid in ids}

    def _store(self, served: ServedVersion) -> UserStore:
        if served.users is None:
            raise ConfigError(f"the served version of {self.dataset!r} records no encoder, so it "
                              "has no user state; re-index it")
        return served.users

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
