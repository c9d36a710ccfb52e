"""One rerank request batch, step by step (the store reads are yielded, see
:mod:`p4r.query.calls`):

1. **users**: each request's profile vector and last n interaction vectors
   (:mod:`p4r.query.users`: one read for every ``user_id`` of the batch);
2. **scores**: the ``default`` mode (best persona cosine with the profile,
   :mod:`p4r.query.scoring`) or the ``interests`` mode (attention over the history rows,
   :mod:`p4r.query.attention`), each for its requests of the batch;
3. **proportional lists** (``diversify="proportional"``): the top k positions shared among the
   user's interests by weight (:mod:`p4r.query.diversify`), from every scored candidate and
   its winning persona vector (or summary vector);
4. **because**: the past interaction behind each returned item (:class:`Because`);
5. **explanations**: the winning personas' payloads (:mod:`p4r.query.explain`).

A ``vector`` request has no history: it is scored in the default mode, never re-ranked, and
has no "because".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from p4r.errors import InputError
from p4r.query import explain, scoring
from p4r.query.attention import Attended, rank_interests
from p4r.query.binding import ServedVersion
from p4r.query.calls import Steps
from p4r.query.diversify import proportional_rerank
from p4r.query.interests import user_interests
from p4r.query.models import PAD
from p4r.query.results import (
    Because,
    RankedItem,
    RerankRequest,
    RerankResult,
    UnknownCandidatesError,
    unscored_of,
)
from p4r.query.scoring import Ranked
from p4r.query.users import UserInput, UserVectors
from p4r.settings import Diversify, QuerySettings, UserMode
from p4r.store.base import Backend


@dataclass
class _Plan:
    """How one request is answered."""

    attend: bool  # scored in the interests mode
    spread: bool  # re-ranked proportionally
    because: bool  # names the interaction behind each item
    k: int | None  # the request's k
    history: np.ndarray | None
    recent: tuple[tuple[str, float], ...]


def rerank_steps(
    backend: Backend, served: ServedVersion, dataset: str, query: QuerySettings,
    users: UserVectors, requests: Sequence[RerankRequest],
    on_unknown: Literal["error", "keep"],
) -> Steps[list[RerankResult]]:
    """Answer a batch of rerank requests from one bound version (see the module doc)."""
    if not requests:
        return []
    if any(r.k is not None and r.k < 1 for r in requests):
        raise InputError("k must be at least 1", field="k")
    modes = [_choice(r.mode, query.user_mode, UserMode, "mode", i)
             for i, r in enumerate(requests)]
    spreads = [_choice(r.diversify, query.diversify, Diversify, "diversify", i)
               for i, r in enumerate(requests)]
    history = query.because or any(m == "interests" for m in modes) or any(
        s == "proportional" for s in spreads)
    inputs = yield from users.resolve(served, requests, with_history=history)
    plans = [_plan(r, u, m, s, query.because) for r, u, m, s in zip(requests, inputs, modes,
                                                                     spreads, strict=True)]
    wanted = [list(dict.fromkeys([c for c in r.candidates if c and c != PAD]))
              for r in requests]
    ranked, unknowns, winners = yield from _score(backend, served, dataset, query, inputs,
                                                  plans, wanted)
    if on_unknown == "error":
        for index, unknown in enumerate(unknowns):
            if unknown:
                raise UnknownCandidatesError(unknown, dataset, request_index=index)
    vectors = yield from explain.point_vectors(backend, served, _vector_keys(ranked, plans))
    for index, plan in enumerate(plans):
        if plan.spread:
            ranked[index] = _proportional(ranked[index], plan, vectors, query)
    becauses = [_because(rows, plan, winner, vectors)
                for rows, plan, winner in zip(ranked, plans, winners, strict=True)]
    personas = yield from explain.persona_payloads(backend, served, ranked)
    return [
        RerankResult(
            items=[RankedItem(item_id, float(hit.score) if hit is not None else None, kind,
                              personas.get(hit.point_id) if hit is not None else None,
                              because.get(item_id))
                   for hit, kind, item_id in rows],
            unknown=unknown, user_id=request.user_id,
            unscored=unscored_of(request.candidates))
        for request, rows, unknown, because in zip(requests, ranked, unknowns, becauses,
                                                   strict=True)
    ]


def _choice(given: str | None, default: str, allowed: object, name: str, index: int) -> str:
    """A request's mode or diversify value (None: the setting), refused when unknown."""
    choices = get_args(allowed)
    value = given if given is not None else default
    if value not in choices:
        raise InputError(f"{value!r} is not one of {', '.join(choices)}", field=name,
                         request_index=index)
    return value


def _plan(request: RerankRequest, user: UserInput, mode: str, spread: str,
          because: bool) -> _Plan:
    known = user.history is not None and len(user.history) > 0
    attend = known and mode == "interests"
    return _Plan(attend=attend, spread=known and spread == "proportional",
                 because=known and (attend or because), k=request.k, history=user.history,
                 recent=user.recent)


def _score(
    backend: Backend, served: ServedVersion, dataset: str, query: QuerySettings,
    inputs: list[UserInput], plans: list[_Plan], wanted: list[list[str]],
) -> Steps[tuple[list[list[Ranked]], list[list[str]], list[dict[str, tuple[int, float]]]]]:
    """Ranked rows, unknown candidates and attention winners per request, each mode in one
    pass over its requests. A proportional request is scored over every candidate (its top k
    is chosen afterwards)."""
    n = len(plans)
    ranked: list[list[Ranked]] = [[] for _ in range(n)]
    unknowns: list[list[str]] = [[] for _ in range(n)]
    winners: list[dict[str, tuple[int, float]]] = [{} for _ in range(n)]
    ks = [None if p.spread else p.k for p in plans]
    plain = [i for i, p in enumerate(plans) if not p.attend]
    if plain:
        lists, unknown = yield from scoring.rank(
            backend, served, dataset, _stacked([inputs[i].vector for i in plain]),
            [wanted[i] for i in plain], [ks[i] for i in plain], "keep")
        for i, rows, missing in zip(plain, lists, unknown, strict=True):
            ranked[i], unknowns[i] = rows, missing
    attend = [i for i, p in enumerate(plans) if p.attend]
    if attend:
        answers: list[Attended] = yield from rank_interests(
            backend, served, [plans[i].history for i in attend],  # type: ignore[misc]
            [wanted[i] for i in attend], [ks[i] for i in attend], query.gamma)
        for i, answer in zip(attend, answers, strict=True):
            ranked[i], unknowns[i], winners[i] = answer.ranked, answer.unknown, answer.winner
    return ranked, unknowns, winners


def _stacked(vectors: list[np.ndarray]) -> np.ndarray:
    """The vectors as the rows of one array: a view of a lone one (``np.stack`` costs ~10 µs
    a request even for one row); nothing downstream writes to it."""
    return vectors[0][None, :] if len(vectors) == 1 else np.stack(vectors)


def _vector_keys(ranked: list[list[Ranked]], plans: list[_Plan]) -> list[explain.VectorKey]:
    """Winning points whose vectors the batch needs: every scored row of a proportional
    request, and the returned rows of a default-mode request with a history (its because)."""
    keys: list[explain.VectorKey] = []
    for rows, plan in zip(ranked, plans, strict=True):
        if plan.spread or (plan.because and not plan.attend):
            keys += [(kind, hit.point_id) for hit, kind, _ in rows if hit is not None]
    return keys


def _proportional(rows: list[Ranked], plan: _Plan, vectors: dict[explain.VectorKey, np.ndarray],
                  query: QuerySettings) -> list[Ranked]:
    """The top k (every position when k is None) shared among the user's interests; the rest
    keep the score order, unknown candidates last; cut to k."""
    scored = [row for row in rows if row[0] is not None]
    if not scored or plan.history is None:
        return rows[:plan.k] if plan.k is not None else rows
    interests = user_interests(plan.history, query.interests, query.gamma, query.last_n)
    winning = np.stack([vectors[(kind, hit.point_id)] for hit, kind, _ in scored])  # type: ignore[union-attr]
    scores = np.array([hit.score for hit, _, _ in scored])  # type: ignore[union-attr]
    positions = plan.k if plan.k is not None else len(scored)
    top = proportional_rerank(scored, scores, winning, interests, positions)
    chosen = {item for _, _, item in top}
    out = top + [row for row in scored if row[2] not in chosen] + [
        row for row in rows if row[0] is None]
    return out[:plan.k] if plan.k is not None else out


def _because(rows: list[Ranked], plan: _Plan, winner: dict[str, tuple[int, float]],
             vectors: dict[explain.VectorKey, np.ndarray]) -> dict[str, Because]:
    """The past interaction behind each returned scored item: the attention winner and its
    weight (interests mode), or the interaction closest to the winning persona and that
    cosine (default mode). Nothing without a history, nor in the default mode with
    P4R_QUERY__BECAUSE=false."""
    if not plan.because or plan.history is None:
        return {}
    if plan.attend:
        return {item: Because(*plan.recent[winner[item][0]], winner[item][1])
                for hit, _, item in rows if hit is not None}
    scored = [(kind, hit.point_id, item) for hit, kind, item in rows if hit is not None]
    if not scored:
        return {}
    # Interaction vectors are unit (the encoder's rows), and so are the cached winning
    # vectors (point_vectors): a cosine is a dot product. It is kept to float32 precision,
    # as the engine's scores: a matrix product rounds an entry differently with the shape of
    # the list (in the last bit of a float64), and an item's because must not depend on
    # which other items a list holds (a top k says exactly what the full list says).
    # The columns read newest first, so the first maximum is the newest of ties.
    winning = np.array([vectors[(kind, pid)] for kind, pid, _ in scored], dtype=np.float64)
    history = np.asarray(plan.history, dtype=np.float64)
    cosine = (winning @ history.T).astype(np.float32)[:, ::-1]
    newest = cosine.argmax(axis=1).tolist()
    weight = cosine.max(axis=1).tolist()
    recent, last = plan.recent, cosine.shape[1] - 1
    return {item: Because(*recent[last - j], w)
            for (_, _, item), j, w in zip(scored, newest, weight, strict=True)}
