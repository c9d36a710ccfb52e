"""Online reranking without an LLM: user vector → best persona per candidate item.

Nothing here imports torch at import time; an encoder is loaded only when a raw history has
to be embedded on the fly.

A reranker serves from the collection version the aliases pointed at when it was built, even
after a re-index moves them (old versions stay until ``p4r-index prune``). Serving processes
call :meth:`Reranker.refresh` periodically or after a deploy to switch to the live version.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from p4r.collections import catalog
from p4r.collections.base import Backend, GroupHit
from p4r.collections.naming import alias_name, point_id
from p4r.datasets.models import Interaction
from p4r.encoder.fingerprint import Fingerprint, fingerprint_for
from p4r.encoder.profile import user_vector
from p4r.errors import ConfigError, InputError, NotFoundError, UnknownUserError
from p4r.settings import EncoderSettings, QuerySettings

PAD = "[PAD]"
Explanation = Literal["persona", "summary", "unscored"]


@dataclass(frozen=True)
class PersonaInfo:
    """The persona that explains a recommendation."""

    persona_id: str
    name: str
    description: str
    rationale: str


@dataclass(frozen=True)
class RankedItem:
    """One reranked candidate: its score and what explains it."""

    item_id: str
    score: float | None
    explanation: Explanation
    persona: PersonaInfo | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form: ``item_id``, ``score``, ``explanation``, ``persona`` (or null)."""
        return {"item_id": self.item_id, "score": self.score, "explanation": self.explanation,
                "persona": asdict(self.persona) if self.persona else None}


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
    vector: np.ndarray | None = None
    k: int | None = None


@dataclass
class _Served:
    """One index version a reranker answers from, with the caches that belong to it.

    Replaced as a whole by :meth:`Reranker.refresh`, so a request never mixes two versions.
    """

    personas: str
    summaries: str | None
    interactions: str | None
    fingerprint: Fingerprint | None
    encoder_settings: EncoderSettings
    encoder: Any = None
    user_cache: dict[str, np.ndarray] = field(default_factory=dict)
    persona_cache: OrderedDict[str, PersonaInfo] = field(default_factory=OrderedDict)


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
        query: γ and n of the user profile.
        encoder: settings of the encoder expected to match the index; its fingerprint is
            checked at construction, and it is loaded only for ``history`` requests.
        check_encoder: set False to skip the fingerprint check (e.g. synthetic benchmarks);
            it applies to :meth:`refresh` too.
    """

    def __init__(
        self,
        dataset: str,
        backend: Backend,
        query: QuerySettings | None = None,
        encoder: EncoderSettings | None = None,
        *,
        check_encoder: bool = True,
    ) -> None:
        self.dataset = dataset
        self.backend = backend
        self.query = query or QuerySettings()
        self.check_encoder = check_encoder
        self._state = self._load(encoder or EncoderSettings())

    def _load(self, settings: EncoderSettings) -> _Served:
        """Resolve the aliases once (all three from one read) and check the encoder."""
        aliases = self.backend.get_aliases()
        personas = aliases.get(alias_name(self.dataset, "personas"))
        if personas is None:
            catalog.live_collection(self.backend, self.dataset, "personas")  # raises NotFound
            return self._load(settings)  # published in between: read the aliases again
        meta = self.backend.get_metadata(personas)
        fingerprint = Fingerprint.from_dict(meta["encoder"]) if "encoder" in meta else None
        if self.check_encoder and fingerprint is not None:
            if settings.backend == "onnx":  # an ONNX export carries its source's fingerprint
                from p4r.encoder.serving import configured_fingerprint

                configured = configured_fingerprint(settings)
            else:
                configured = fingerprint_for(settings.model)
            if configured != fingerprint:
                raise ConfigError(
                    f"encoder fingerprint mismatch: {personas} was built with "
                    f"{fingerprint.short()}, but P4R_ENCODER__MODEL="
                    f"{settings.model} is {configured.short()}; set "
                    "P4R_ENCODER__MODEL to the indexing encoder or re-index with this one"
                )
        return _Served(personas=personas,
                       summaries=aliases.get(alias_name(self.dataset, "summaries")),
                       interactions=aliases.get(alias_name(self.dataset, "interactions")),
                       fingerprint=fingerprint, encoder_settings=settings)

    def refresh(self, encoder: EncoderSettings | None = None) -> bool:
        """Switch to the version the aliases point at now, if it changed; True if it switched.

        The new version is resolved and checked completely before one reference swap, so
        requests running meanwhile finish on the old version and later ones use the new one;
        caches start empty because vectors and payloads belong to a version. Until this is
        called a reranker keeps serving its version (it exists until ``p4r-index prune``), so
        serving processes call it periodically or after a deploy.

        Args:
            encoder: encoder settings for the new version, for a re-index with another
                encoder (default: keep the current ones). Used only when switching.

        Raises:
            ConfigError: the new version was built with an encoder other than the configured
                one (unless ``check_encoder=False``); the reranker stays on its version.
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

    # -- user vectors --------------------------------------------------------------------------
    def user_vector(self, user_id: str) -> np.ndarray:
        """Decayed mean of the user's last n cached interaction embeddings (memoised)."""
        return self._user_vector(self._state, user_id)

    def _user_vector(self, state: _Served, user_id: str) -> np.ndarray:
        cached = state.user_cache.get(user_id)
        if cached is not None:
            return cached
        if state.interactions is None:
            raise NotFoundError(f"dataset {self.dataset!r} has no interactions collection")
        records = list(self.backend.scroll(state.interactions, match=("user_id", user_id),
                                           with_vectors=True, payload_keys=["ts", "item_id"]))
        if not records:
            raise UnknownUserError(
                f"user {user_id!r} has no interactions in dataset {self.dataset!r}",
                user_id=user_id)
        records.sort(key=lambda r: (float((r.payload or {}).get("ts", 0.0)),
                                    str((r.payload or {}).get("item_id", ""))))
        vector = user_vector(np.stack([r.vector for r in records if r.vector is not None]),
                             gamma=self.query.gamma, last_n=self.query.last_n)
        state.user_cache[user_id] = vector
        return vector

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
        if state.encoder is None:
            encoder: Any
            if state.encoder_settings.backend == "onnx":  # torch-free serving
                from p4r.encoder.serving import OnnxEncoder

                encoder = OnnxEncoder(settings=state.encoder_settings)
            else:
                from p4r.encoder.model import Encoder

                encoder = Encoder(state.encoder_settings)
            if state.fingerprint is not None and encoder.fingerprint != state.fingerprint:
                raise ConfigError(
                    f"encoder fingerprint mismatch: index built with {state.fingerprint.short()}, "
                    f"configured encoder is {encoder.fingerprint.short()}"
                )
            state.encoder = encoder
        return state.encoder

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
        if not summary and state.summaries:
            found = self.backend.retrieve(state.summaries, [point_id(self.dataset, item_id)])
            summary = (found[0].payload or {}).get("summary", "") if found else ""
        ts = record.get("timestamp", index)
        return Interaction(
            user_id=str(record.get("user_id") or ""), item_id=str(item_id),
            timestamp=parse_timestamp(ts, "history", index + 1, f"{where}.timestamp"),
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
        norm = float(np.linalg.norm(vector))
        if vector.ndim != 1 or norm == 0.0:
            raise InputError("vector must be a non-zero 1-d array", field="vector")
        return vector / norm

    # -- reranking -----------------------------------------------------------------------------
    def rerank(
        self,
        *,
        candidates: Sequence[str],
        user_id: str | None = None,
        history: Sequence[Mapping[str, Any] | Interaction] | None = None,
        vector: np.ndarray | None = None,
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
        """Rerank many users' candidates in one call (one batched engine query).

        Items are ordered by score (ties by item id): the best persona's cosine, or the
        summary's cosine for items without personas. Candidates the index does not know keep
        their input order at the end as ``unscored`` when ``on_unknown="keep"``; with
        ``"error"`` they raise :class:`UnknownCandidatesError`. ``[PAD]`` entries are skipped.
        """
        if not requests:
            return []
        state = self._state  # read once: a concurrent refresh() cannot mix two versions
        vectors = np.stack([self._resolve_vector(state, r) for r in requests])
        wanted = [list(dict.fromkeys(c for c in r.candidates if c and c != PAD))
                  for r in requests]
        persona_hits = self.backend.best_per_group(state.personas, vectors, wanted)
        missing = []
        for cands, hits in zip(wanted, persona_hits, strict=True):
            found = {h.group for h in hits}
            missing.append([c for c in cands if c not in found])
        summary_hits: list[list[GroupHit]] = [[] for _ in requests]
        if state.summaries and any(missing):
            rows = [i for i, m in enumerate(missing) if m]
            answers = self.backend.best_per_group(state.summaries, vectors[rows],
                                                  [missing[i] for i in rows])
            for i, answer in zip(rows, answers, strict=True):
                summary_hits[i] = answer

        ranked_lists: list[list[tuple[GroupHit | None, Explanation, str]]] = []
        unknowns: list[list[str]] = []
        for request, cands, p_hits, s_hits in zip(requests, wanted, persona_hits, summary_hits,
                                                  strict=True):
            scored: list[tuple[GroupHit | None, Explanation, str]] = [
                (h, "persona", h.group) for h in p_hits]
            scored += [(h, "summary", h.group) for h in s_hits]
            scored.sort(key=lambda row: (-row[0].score, row[2]))  # type: ignore[union-attr]
            seen = {row[2] for row in scored}
            unknown = [c for c in cands if c not in seen]
            if unknown and on_unknown == "error":
                raise UnknownCandidatesError(unknown, self.dataset)
            ranked = scored + [(None, "unscored", c) for c in unknown]
            ranked_lists.append(ranked[:request.k] if request.k is not None else ranked)
            unknowns.append(unknown)
        personas = self._persona_payloads(state, ranked_lists)
        return [
            RerankResult(
                items=[RankedItem(item_id=item_id,
                                  score=float(hit.score) if hit is not None else None,
                                  explanation=kind,
                                  persona=personas.get(str(hit.point_id)) if hit else None)
                       for hit, kind, item_id in ranked],
                unknown=unknown, user_id=request.user_id)
            for request, ranked, unknown in zip(requests, ranked_lists, unknowns, strict=True)
        ]

    def _persona_payloads(
        self, state: _Served, ranked_lists: list[list[tuple[GroupHit | None, Explanation, str]]]
    ) -> dict[str, PersonaInfo]:
        """Persona details for the returned persona hits only, through a bounded LRU cache.

        Payload stays off the hot path: the engine query returns ids and scores, and only the
        winning personas of returned items are read (popular items come from memory).
        """
        cache = state.persona_cache
        found: dict[str, PersonaInfo] = {}
        need: list[Any] = []
        for ranked in ranked_lists:
            for hit, kind, _ in ranked:
                if kind != "persona" or hit is None:
                    continue
                key = str(hit.point_id)
                info = cache.get(key)
                if info is not None:
                    cache.move_to_end(key)
                    found[key] = info
                elif hit.payload is not None:
                    found[key] = _persona_info(hit.payload)
                else:
                    need.append(hit.point_id)
        if need:
            for rec in self.backend.retrieve(state.personas, need):
                found[rec.id] = _persona_info(rec.payload or {})
        if self.query.persona_cache_size:
            for key, info in found.items():
                cache[key] = info
            while len(cache) > self.query.persona_cache_size:
                cache.popitem(last=False)
        return found


def _persona_info(payload: Mapping[str, Any]) -> PersonaInfo:
    return PersonaInfo(persona_id=str(payload.get("persona_id", "")),
                       name=str(payload.get("name", "")),
                       description=str(payload.get("description", "")),
                       rationale=str(payload.get("rationale", "")))
