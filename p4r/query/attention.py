"""The ``interests`` mode served: attention over the user's last n interaction vectors.

Each past interaction j scores a candidate by its best persona cosine s_j; the item's score is
Σ_j a_j s_j with a = softmax_j(τ s_j + log prior_j), τ = 10 and prior_j = γ^(n-1-j) (the
profile's recency weights): :func:`p4r.query.interests.attention_scores`, the numpy oracle,
applied to the cosines the store returns.

The cosines come from one batch of single-row queries, one per history row, filtered to the
request's candidates (every request of a batch in the same engine call):

* on a version with the per-item MaxSim collection (``items``, built with
  ``P4R_INDEX__MAXSIM=true``), each row's MaxSim score of an item *is* its best-persona
  cosine, one point per item;
* otherwise each row asks the personas collection for the best persona per item (the
  persona fallback: more points per query).

Items without personas are scored from their summary, as their one persona (the same batch on
the summaries). A Qdrant multivector *user* query cannot do this: MaxSim sums over the query's
rows and cosine ignores a row's scale.

**Explanation.** The winner of an item is the history row with the largest attention weight
(the newest of equal maxima); the item's persona is the winner's best persona for it: taken
from the winner's own hit in the fallback, and, through MaxSim, from one more batch of
persona queries (one row per distinct winner, filtered to the returned items it won), as the
default mode explains MaxSim hits. A summary-scored item is explained by its summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from p4r.errors import BackendError
from p4r.query.binding import ServedVersion
from p4r.query.calls import Steps
from p4r.query.interests import TAU, attention_scores, recency_prior
from p4r.query.scoring import Ranked, best_in_view
from p4r.store.base import Backend, GroupAnswer, GroupHit


@dataclass
class Attended:
    """One request's answer in the ``interests`` mode.

    Attributes:
        ranked: scored rows best first (each hit carries the attention score and the winning
            persona or the summary point), then the unknown candidates as ``unscored``; cut
            to k.
        unknown: candidates with neither personas nor a summary, in input order.
        winner: item → (history row of the attention winner, its weight), for every scored
            item.
    """

    ranked: list[Ranked]
    unknown: list[str]
    winner: dict[str, tuple[int, float]] = field(default_factory=dict)


def rank_interests(
    backend: Backend, served: ServedVersion, histories: Sequence[np.ndarray],
    wanted: Sequence[Sequence[str]], ks: Sequence[int | None], gamma: float,
    tau: float = TAU,
) -> Steps[list[Attended]]:
    """Attention scores of each request's candidates from its history rows (see the module
    doc; steps: the store reads are yielded, see :mod:`p4r.query.calls`).

    Args:
        backend: the store.
        served: the bound version (queried through its views).
        histories: per request, ``(n, d)`` interaction vectors, oldest first.
        wanted: per request, its distinct candidates in input order.
        ks: per request, how many rows to keep (None: all).
        gamma: the recency prior's γ.
        tau: the attention temperature.
    """
    rows = np.concatenate([np.asarray(h, dtype=np.float32) for h in histories])
    owner = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    maxsim = served.items is not None and "items" in served.views
    persona_view = served.views["items" if maxsim else "personas"]
    answers = yield from best_in_view(backend, persona_view, rows,
                                      [wanted[r] for r in owner], None)
    present = [answers[int(np.argmax(owner == r))].present for r in range(len(histories))]
    missing = [[c for c in cands if c not in have] for cands, have in zip(wanted, present,
                                                                          strict=True)]
    summaries = yield from _summary_answers(backend, served, rows, owner, missing)
    out: list[Attended] = []
    for r, cands in enumerate(wanted):
        mine = np.flatnonzero(owner == r)
        persona_items = [c for c in cands if c in present[r]]
        hits_p = _by_item([answers[j] for j in mine], persona_items)
        scored = {h.group for h in summaries[mine[0]].hits}
        summary_items = [c for c in missing[r] if c in scored]
        hits_s = _by_item([summaries[j] for j in mine], summary_items)
        items = persona_items + summary_items
        if not items:
            unknown = list(cands)
            out.append(Attended(_cut([(None, "unscored", c) for c in unknown], ks[r]), unknown))
            continue
        sims = np.array([[hp[c].score for c in persona_items] + [hs[c].score
                                                                 for c in summary_items]
                         for hp, hs in zip(hits_p, hits_s, strict=True)], dtype=np.float64)
        attention = attention_scores(sims, recency_prior(len(mine), gamma), tau)
        order = sorted(range(len(items)), key=lambda i: (-attention.scores[i], items[i]))
        ranked: list[Ranked] = []
        for i in order:
            item, win = items[i], int(attention.winner[i])
            source = hits_p[win] if i < len(persona_items) else hits_s[win]
            ranked.append((GroupHit(item, source[item].point_id, float(attention.scores[i])),
                           "persona" if i < len(persona_items) else "summary", item))
        unknown = [c for c in cands if c not in set(items)]
        ranked += [(None, "unscored", c) for c in unknown]
        out.append(Attended(_cut(ranked, ks[r]), unknown, {
            items[i]: (int(attention.winner[i]), float(attention.weight[i]))
            for i in range(len(items))}))
    if maxsim:
        yield from _winning_personas(backend, served, rows, owner, out)
    return out


def _summary_answers(backend: Backend, served: ServedVersion, rows: np.ndarray,
                     owner: np.ndarray, missing: list[list[str]]) -> Steps[list[GroupAnswer]]:
    """Each history row's summary cosines for its request's candidates without personas."""
    out = [GroupAnswer([], set()) for _ in owner]
    asking = [j for j, r in enumerate(owner) if missing[r]]
    view = served.views.get("summaries")
    if not asking or view is None:
        return out
    answers = yield from best_in_view(backend, view, rows[asking],
                                      [missing[owner[j]] for j in asking], None)
    for j, answer in zip(asking, answers, strict=True):
        out[j] = answer
    return out


def _by_item(answers: Sequence[GroupAnswer],
             expected: Sequence[str]) -> list[dict[str, GroupHit]]:
    """Each row's hits by item; every expected item must have a hit in every row (an exact
    query without a limit returns every candidate that has points)."""
    out = [{h.group: h for h in answer.hits} for answer in answers]
    for hits in out:
        lost = [c for c in expected if c not in hits]
        if lost:
            raise BackendError(f"the store returned no score for {lost[0]!r}, which it lists "
                               "as present; check the version (`p4r index check`)")
    return out


def _cut(ranked: list[Ranked], k: int | None) -> list[Ranked]:
    return ranked[:k] if k is not None else ranked


def _winning_personas(backend: Backend, served: ServedVersion, rows: np.ndarray,
                      owner: np.ndarray, answers: list[Attended]) -> Steps[None]:
    """Replace the MaxSim item points of the returned persona items by each item's winning
    persona: the best persona for the attention winner's row, one batch of queries (one row
    per distinct winner, filtered to the items it won)."""
    starts = {r: int(np.argmax(owner == r)) for r in range(len(answers))}
    groups: dict[int, list[str]] = {}
    for r, answer in enumerate(answers):
        for hit, kind, item in answer.ranked:
            if kind == "persona" and hit is not None:
                groups.setdefault(starts[r] + answer.winner[item][0], []).append(item)
    if not groups:
        return
    winners = sorted(groups)
    found = yield from best_in_view(backend, served.views["personas"], rows[winners],
                                    [groups[j] for j in winners], None)
    best = {(j, h.group): h.point_id for j, answer in zip(winners, found, strict=True)
            for h in answer.hits}
    for r, answer in enumerate(answers):
        answer.ranked = [
            (GroupHit(item, best[(starts[r] + answer.winner[item][0], item)], hit.score),
             kind, item) if kind == "persona" and hit is not None else (hit, kind, item)
            for hit, kind, item in answer.ranked]
