"""Scoring: each candidate's best persona (or summary) cosine, ranked, for a batch of users.

Stateless: given the bound version and the users' vectors, it asks the store for the best
persona of each candidate item (exact, filtered to the candidates), falls back to the summary
for items without personas, and orders by score (ties by item id). Explanations are attached
by :mod:`p4r.query.explain`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from p4r.query.binding import ServedVersion
from p4r.query.calls import Call, Steps
from p4r.query.results import Explanation, UnknownCandidatesError
from p4r.store.base import Backend, GroupAnswer, GroupHit
from p4r.store.deltas import View, merge_answers

MAXSIM_RATIO = 2  # score through the per-item MaxSim collection when k ≤ candidates / 2
# One ranked row: the winning point (None when unscored), why, and the item id.
Ranked = tuple[GroupHit | None, Explanation, str]


def rank(
    backend: Backend, served: ServedVersion, dataset: str, vectors: np.ndarray,
    wanted: list[list[str]], ks: Sequence[int | None],
    on_unknown: Literal["error", "keep"],
) -> Steps[tuple[list[list[Ranked]], list[list[str]]]]:
    """Ranked rows (best first, cut to k) and unknown candidates, per request (steps: the
    store reads are yielded, see :mod:`p4r.query.calls`).

    Args:
        backend: the store.
        served: the bound version.
        dataset: dataset name (for errors).
        vectors: one unit vector per request.
        wanted: each request's distinct candidates, in input order.
        ks: each request's k (None: every candidate).
        on_unknown: ``"error"`` raises :class:`UnknownCandidatesError`; ``"keep"`` ranks them
            last as ``unscored``, in input order.
    """
    maxsim = [served.items is not None and k is not None and k * MAXSIM_RATIO <= len(w)
              for k, w in zip(ks, wanted, strict=True)]
    persona_answers = yield from _persona_answers(backend, served, vectors, wanted, ks, maxsim)
    summary_hits = yield from _summary_hits(backend, served, vectors, wanted, persona_answers)
    ranked_lists: list[list[Ranked]] = []
    unknowns: list[list[str]] = []
    for index, (k, cands, answer, s_hits) in enumerate(
            zip(ks, wanted, persona_answers, summary_hits, strict=True)):
        scored: list[Ranked] = [(h, "persona", h.group) for h in answer.hits]
        if s_hits:  # persona hits alone come back in this order already
            scored += [(h, "summary", h.group) for h in s_hits]
            scored.sort(key=lambda row: (-row[0].score, row[2]))  # type: ignore[union-attr]
        known = answer.present | {h.group for h in s_hits}
        unknown = [c for c in cands if c not in known]
        if unknown and on_unknown == "error":
            raise UnknownCandidatesError(unknown, dataset, request_index=index)
        ranked = scored + [(None, "unscored", c) for c in unknown]
        ranked_lists.append(ranked[:k] if k is not None else ranked)
        unknowns.append(unknown)
    yield from _explain_maxsim(backend, served, vectors, ranked_lists, maxsim)
    return ranked_lists, unknowns


def rows_of(vectors: np.ndarray, rows: list[int]) -> np.ndarray:
    """``vectors[rows]``, without the copy when ``rows`` are all of them in order (a batch of
    one request, or of plain requests only: the usual case)."""
    if len(rows) == len(vectors) and rows[-1] == len(rows) - 1:
        return vectors
    return vectors[rows]


def _persona_answers(
    backend: Backend, served: ServedVersion, vectors: np.ndarray, wanted: list[list[str]],
    ks: Sequence[int | None], maxsim: list[bool],
) -> Steps[list[GroupAnswer]]:
    """Per request: the scored persona items, and every candidate that has personas.

    A top k below the candidates asks the store for just enough points (it bounds the query);
    MaxSim rows score items in the per-item collection and return only the top k.
    """
    out = [GroupAnswer([], set()) for _ in wanted]
    plain = [i for i, m in enumerate(maxsim) if not m]
    if plain:
        limits = [ks[i] if ks[i] is not None and ks[i] < len(wanted[i])  # type: ignore[operator]
                  else None for i in plain]
        answers = yield from best_in_view(backend, served.views["personas"],
                                          rows_of(vectors, plain), [wanted[i] for i in plain],
                                          limits)
        for i, answer in zip(plain, answers, strict=True):
            out[i] = answer
    fast = [i for i, m in enumerate(maxsim) if m]
    if fast and served.items:
        view = served.views["items"]
        present = []
        for i in fast:
            present.append((yield from present_in_view(backend, view, wanted[i])))
        answers = yield from best_in_view(backend, view, rows_of(vectors, fast),
                                          [sorted(p) for p in present], [ks[i] for i in fast])
        for i, have, answer in zip(fast, present, answers, strict=True):
            out[i] = GroupAnswer(answer.hits, have)
    return out


def _summary_hits(
    backend: Backend, served: ServedVersion, vectors: np.ndarray, wanted: list[list[str]],
    persona_answers: list[GroupAnswer],
) -> Steps[list[list[GroupHit]]]:
    """Summary scores of the candidates that have no personas (cold-start fallback)."""
    missing = [[c for c in cands if c not in answer.present]
               for cands, answer in zip(wanted, persona_answers, strict=True)]
    hits: list[list[GroupHit]] = [[] for _ in wanted]
    rows = [i for i, m in enumerate(missing) if m]
    if served.summaries and rows:
        answers = yield from best_in_view(backend, served.views["summaries"],
                                          rows_of(vectors, rows), [missing[i] for i in rows],
                                          None)
        for i, answer in zip(rows, answers, strict=True):
            hits[i] = answer.hits
    return hits


def _explain_maxsim(
    backend: Backend, served: ServedVersion, vectors: np.ndarray,
    ranked_lists: list[list[Ranked]], maxsim: list[bool],
) -> Steps[None]:
    """Replace MaxSim item hits by the winning persona of each returned item (a second,
    small persona query over the top k only); scores come from that query, as in the
    plain path."""
    rows = [i for i, m in enumerate(maxsim) if m]
    if not rows:
        return
    groups = [[item for _, kind, item in ranked_lists[i] if kind == "persona"] for i in rows]
    answers = yield from best_in_view(backend, served.views["personas"],
                                      rows_of(vectors, rows), groups, None)
    for i, answer in zip(rows, answers, strict=True):
        best = {h.group: h for h in answer.hits}
        ranked = [(best.get(item, hit), kind, item) if kind == "persona" else
                  (hit, kind, item) for hit, kind, item in ranked_lists[i]]
        scored = [r for r in ranked if r[0] is not None]
        scored.sort(key=lambda row: (-row[0].score, row[2]))  # type: ignore[union-attr]
        ranked_lists[i] = scored + [r for r in ranked if r[0] is None]


def best_in_view(backend: Backend, view: View, vectors: np.ndarray,
                 groups: Sequence[Sequence[str]],
                 limits: Sequence[int | None] | None) -> Steps[list[GroupAnswer]]:
    """The best point per group through a view: one collection, or an overlay and its base
    (masked items from the overlay only), merged in score order."""
    kwargs = {"limits": list(limits)} if limits is not None else {}
    answers = yield Call(backend, "best_per_group", (view.primary, vectors, groups), kwargs)
    if view.base is None:
        return answers
    base = yield Call(backend, "best_per_group", (view.base, vectors, view.base_groups(groups)),
                      kwargs)
    return merge_answers(answers, base, limits)


def present_in_view(backend: Backend, view: View, values: Sequence[str]) -> Steps[set[str]]:
    """Which of ``values`` have points through a view."""
    present: set[str] = yield Call(backend, "groups_present", (view.primary, values))
    if view.base is not None:
        present |= yield Call(backend, "groups_present", (view.base,
                                                            view.base_groups([values])[0]))
    return present
