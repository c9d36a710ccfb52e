"""Online reranking without an LLM: user vector → best persona per candidate item.

:class:`Reranker` is a facade over four parts: the version it is bound to
(:mod:`~p4r.query.binding`), user vectors and live events (:mod:`~p4r.query.users`),
scoring (:mod:`~p4r.query.scoring`, and :mod:`~p4r.query.attention` for the ``interests``
mode) and explanations (:mod:`~p4r.query.explain`), put together per request batch by
:mod:`~p4r.query.pipeline`. Nothing here imports torch at import time; an encoder is
loaded only when text has to be embedded on the fly (``history`` requests and live
interactions).

A reranker serves from the version the aliases pointed at when it was built, even after a
re-index moves them (old versions stay until ``p4r index prune``). Serving processes call
:meth:`Reranker.refresh` periodically or after a deploy to switch to the live version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from p4r.datasets.models import Interaction
from p4r.encoder.fingerprint import Fingerprint
from p4r.errors import P4RError
from p4r.query import explain
from p4r.query.binding import ServedVersion, bind_version
from p4r.query.calls import Steps, arun, run
from p4r.query.models import AddReport, LiveInteraction, UserProfile
from p4r.query.pipeline import rerank_steps
from p4r.query.results import PersonaInfo, RerankRequest, RerankResult
from p4r.query.users import UserVectors
from p4r.settings import Diversify, EncoderSettings, QuerySettings, Settings, UserMode
from p4r.store import open_backend
from p4r.store.base import Backend
from p4r.store.manifest import VersionManifest
from p4r.store.naming import alias_name
from p4r.store.users import ForgetReport

# Requests answered on a version when a reranker binds it (see Reranker._warm_up).
WARM_UP_REQUESTS = 32


class Reranker:
    """Scores candidate items for a user by their best-matching persona.

    Args:
        dataset: dataset name whose live index (aliases) to use.
        backend: the store holding it.
        query: γ and n of the user profile, and the cache sizes.
        encoder: settings of the encoder for ``history`` requests and live interactions; it is
            loaded (and its fingerprint checked against the index) only when text is encoded.
    """

    def __init__(self, dataset: str, backend: Backend, query: QuerySettings | None = None,
                 encoder: EncoderSettings | None = None) -> None:
        self.dataset = dataset
        self.backend = backend
        self.query = query or QuerySettings()
        self.users = UserVectors(dataset, backend, self.query)
        self.owns_backend = False  # open_reranker sets it: close() then closes the store
        self._served = self._bind(encoder or EncoderSettings())

    def _bind(self, encoder: EncoderSettings) -> ServedVersion:
        served = bind_version(self.backend, self.dataset, self.query, encoder)
        self._warm_up(served)
        return served

    def _warm_up(self, served: ServedVersion) -> None:
        """Answer a few requests on a version before it serves (at a start or a reload), so
        the first real one does not run on cold caches. Measured at 125K personas on Edge
        (`p4r bench query`): the first request after a bind cost ~3x a warm one without this,
        ~1.6x after 3 warm-up requests. Over the store's first groups, more requests did not
        help (reload: 2.0x after 12, 2.0x after 36); spread over all of it they do: in ten
        interleaved pairs, 12 over the first groups against 32 spread, a reload's first
        request went from 1.94x to 1.80x a warm one, a start's from 1.36x to 1.27x (medians;
        the 20 extra requests cost ~10 ms per bind). Random unit vectors over groups the
        store already holds; nothing is written. Best effort: damage is left to the requests
        that report it."""
        if served.fingerprint is None or WARM_UP_REQUESTS == 0:
            return
        try:
            items = self.backend.warm_up_groups(served.personas, WARM_UP_REQUESTS * 20)
            if not items:
                return
            count = min(WARM_UP_REQUESTS, len(items))  # a small store: no empty requests
            rng = np.random.default_rng(0)
            vectors = rng.standard_normal((count, served.fingerprint.dim))
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            requests = [RerankRequest(candidates=items[i::count],
                                      vector=vectors[i].astype(np.float32).tolist())
                        for i in range(count)]
            for request in requests:  # one at a time, as requests come
                run(rerank_steps(self.backend, served, self.dataset, self.query, self.users,
                                 [request], "keep"))
        except P4RError:
            return

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
        current = self._served
        target = self.backend.get_aliases().get(alias_name(self.dataset, "personas"))
        if target == current.personas:
            now = VersionManifest.from_metadata(self.backend.get_metadata(target))
            if (now.digest, now.delta_seq, now.delta_pending) == (
                    current.manifest.digest, current.manifest.delta_seq,
                    current.manifest.delta_pending):
                return False  # no delta was written in place since
            fresh = self._bind(encoder or current.encoder_settings)
            self._served = fresh
            return True
        fresh = self._bind(encoder or current.encoder_settings)
        if fresh.personas == current.personas:
            return False
        self._served = fresh  # one reference: a request sees the old state or the new one
        return True

    @property
    def served(self) -> ServedVersion:
        """The version answered from now (collections, manifest, caches)."""
        return self._served

    @property
    def version(self) -> int | None:
        """Version number this reranker answers from."""
        return self._served.version

    @property
    def personas(self) -> str:
        """Personas collection (versioned name) this reranker answers from."""
        return self._served.personas

    @property
    def summaries(self) -> str | None:
        """Summaries collection of the served version, if any."""
        return self._served.summaries

    @property
    def fingerprint(self) -> Fingerprint | None:
        """Encoder fingerprint stored with the served version."""
        return self._served.fingerprint

    @property
    def encoder_settings(self) -> EncoderSettings:
        """Encoder settings used for ``history`` requests on the served version."""
        return self._served.encoder_settings

    @property
    def cached_profiles(self) -> int:
        """How many user profiles this process holds in memory now."""
        users = self._served.users
        return users.cached_profiles() if users is not None else 0

    # -- users ---------------------------------------------------------------------------------
    def add_interactions(
        self, interactions: Sequence[LiveInteraction | Mapping[str, Any]]
    ) -> AddReport:
        """Record new interactions durably; the users' next requests, on any process or host,
        reflect them (see :meth:`p4r.query.users.UserVectors.add_interactions`)."""
        return self.users.add_interactions(self._served, interactions)

    def forget(self, user_id: str) -> ForgetReport:
        """Delete a user's interactions and profile, and refuse them from now on."""
        return self.users.forget(self._served, user_id)

    def user_vector(self, user_id: str) -> np.ndarray:
        """The user's decayed profile (stored point, plus live events), through the LRU."""
        return self.users.user_vector(self._served, user_id)

    def user_profile(self, user_id: str) -> UserProfile:
        """The last n interactions a user's profile averages (oldest first)."""
        return run(self.users.user_profile(self._served, user_id))

    async def auser_profile(self, user_id: str) -> UserProfile:
        """:meth:`user_profile` for an event loop (awaits a server store)."""
        return await arun(self.users.user_profile(self._served, user_id))

    def item_personas(self, item_id: str) -> list[PersonaInfo]:
        """Every persona of an item, by persona id."""
        return run(explain.item_personas(self.backend, self._served, self.dataset, item_id))

    async def aitem_personas(self, item_id: str) -> list[PersonaInfo]:
        """:meth:`item_personas` for an event loop (awaits a server store)."""
        return await arun(explain.item_personas(self.backend, self._served, self.dataset,
                                                item_id))

    def close(self) -> None:
        """Let go of the served version: close the store when this reranker opened it
        (:func:`open_reranker`), else release the version's collections in it."""
        if self.owns_backend:
            self.backend.close()
        else:
            self.backend.release([name for view in self._served.views.values()
                                  for name in (view.primary, view.base) if name])

    # -- reranking -----------------------------------------------------------------------------
    def rerank(
        self, *, candidates: Sequence[str], user_id: str | None = None,
        history: Sequence[Mapping[str, Any] | Interaction] | None = None,
        vector: np.ndarray | Sequence[float] | None = None, k: int | None = None,
        on_unknown: Literal["error", "keep"] = "error", mode: UserMode | None = None,
        diversify: Diversify | None = None,
    ) -> RerankResult:
        """Rerank ``candidates`` for one user; see :meth:`rerank_batch`."""
        request = RerankRequest(candidates=candidates, user_id=user_id, history=history,
                                vector=vector, k=k, mode=mode, diversify=diversify)
        return self.rerank_batch([request], on_unknown=on_unknown)[0]

    def rerank_batch(self, requests: Sequence[RerankRequest], *,
                     on_unknown: Literal["error", "keep"] = "error") -> list[RerankResult]:
        """Rerank many users' candidates in one call (batched engine queries).

        Items are ordered by score (ties by item id): in the ``default`` mode the best
        persona's cosine with the user's profile, or the summary's cosine for items without
        personas; in the ``interests`` mode (``request.mode``, else ``P4R_QUERY__USER_MODE``)
        attention over the user's last n interaction vectors (:mod:`p4r.query.attention`).
        With ``diversify="proportional"`` the top k positions are shared among the user's
        interests by weight (:mod:`p4r.query.diversify`). Each item of a ``user_id`` or
        ``history`` request says which past interaction it is ``because`` of.

        Candidates the index does not know keep their input order at the end as
        ``unscored`` when ``on_unknown="keep"``; with ``"error"`` they raise
        :class:`~p4r.query.results.UnknownCandidatesError`. ``[PAD]`` entries are skipped.
        With ``k`` below the candidate count the engine is asked for just enough persona
        points to hold the k best items (or, on a version built with the per-item MaxSim
        collection, items are scored through it when k ≤ candidates / 2); the answer is the
        same.
        """
        return run(self._steps(requests, on_unknown))

    async def arerank_batch(self, requests: Sequence[RerankRequest], *,
                            on_unknown: Literal["error", "keep"] = "error"
                            ) -> list[RerankResult]:
        """:meth:`rerank_batch` for an event loop: reads of a server store are awaited
        (``AsyncQdrantClient``); an embedded store answers in place. Requests with a raw
        ``history`` run the encoder: call :meth:`rerank_batch` on a worker thread for those."""
        return await arun(self._steps(requests, on_unknown))

    def _steps(self, requests: Sequence[RerankRequest],
               on_unknown: Literal["error", "keep"]) -> Steps[list[RerankResult]]:
        served = self._served  # read once: a concurrent refresh() cannot mix two versions
        return rerank_steps(self.backend, served, self.dataset, self.query, self.users,
                            requests, on_unknown)


def open_reranker(settings: Settings, dataset: str, *, backend: Backend | None = None) -> Reranker:
    """A Reranker of ``dataset`` on the configured backend (or ``backend``, e.g. one opened on
    a ``QdrantClient`` the application already holds)."""
    owned = backend is None
    reranker = Reranker(dataset, backend or open_backend(settings), settings.query,
                        settings.encoder)
    reranker.owns_backend = owned
    return reranker
