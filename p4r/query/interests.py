"""A user's tastes kept apart: interest clusters and multi-interest attention (pure numpy).

Two views of the last n interaction vectors (unit rows, oldest first):

* **Interests** (:func:`user_interests`): spherical k-means into at most k clusters, each
  weighted by the recency-weighted share of its members. TDD
  (:mod:`p4r.evaluation.tdd`) and the proportional re-rank (:mod:`p4r.query.diversify`) use
  them.
* **Attention** (:func:`attention_scores`): every past interaction j scores a candidate by
  its best persona cosine s_j; the item's score is Σ_j a_j s_j with
  a = softmax_j(τ s_j + log prior_j). This is the numpy oracle the served ``interests`` mode is
  tested against, so it takes the (n × m) matrix of best-persona cosines the server gets from
  one batch of single-row queries, not the persona vectors.

Nothing here touches a store or imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from p4r.encoder.profile import decay_weights
from p4r.settings import DEFAULT_PROFILE

TAU = 10.0
"""Attention temperature, fixed in advance (issue 19); not tuned on any reported set."""
INTERESTS = 3
"""Number of interests (k) of TDD and the proportional re-rank, fixed in advance."""


def _unit_rows(vectors: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-d array of row vectors, got shape {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{what} has a zero vector (no direction to compare by cosine)")
    return array / norms


# -- interests ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class UserInterests:
    """A user's interests, heaviest first.

    Attributes:
        centroids: ``(c, d)`` unit centroids, c ≤ k.
        weights: ``(c,)`` recency-weighted shares of the members, summing to 1.
        labels: ``(n,)`` interest index of each history row used (oldest first).
    """

    centroids: np.ndarray
    weights: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.weights)


def nearest_interest(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the centroid with the highest cosine to each row; ties go to the lower index.

    Args:
        vectors: ``(m, d)`` vectors (any norm but zero).
        centroids: ``(c, d)`` centroids.

    Returns:
        ``(m,)`` int array.
    """
    sims = _unit_rows(vectors, "vectors") @ _unit_rows(centroids, "centroids").T
    return np.argmax(sims, axis=1)  # argmax takes the first of equal maxima


def farthest_first_seeds(vectors: np.ndarray, k: int) -> list[int]:
    """Deterministic seeds for spherical k-means: the newest row, then repeatedly the row whose
    highest cosine to the seeds so far is lowest (ties: the newer row), never a row equal to a
    seed. Returns at most ``k`` row indices (fewer when fewer rows are distinct)."""
    unit = _unit_rows(vectors, "vectors")
    n = len(unit)
    seeds = [n - 1]
    closest = unit @ unit[n - 1]
    while len(seeds) < k:
        free = [i for i in range(n) if not any(np.array_equal(unit[i], unit[s]) for s in seeds)]
        if not free:
            break
        lowest = min(closest[i] for i in free)
        pick = max(i for i in free if closest[i] == lowest)
        seeds.append(pick)
        closest = np.maximum(closest, unit @ unit[pick])
    return seeds


def spherical_kmeans(vectors: np.ndarray, k: int,
                     max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (cosine) with :func:`farthest_first_seeds`; no randomness.

    Lloyd steps: assign each row to its nearest centroid (:func:`nearest_interest`), then set
    each centroid to the normalised unweighted mean of its members; a centroid whose cluster
    empties, or whose members' mean is zero, keeps its previous value. Stops when no
    assignment changes, or after ``max_iter`` steps.

    Args:
        vectors: ``(n, d)`` rows, n ≥ 1.
        k: the most clusters wanted; fewer distinct rows give that many clusters.
        max_iter: cap on the Lloyd steps.

    Returns:
        ``(centroids (c, d), labels (n,))`` with c = min(k, distinct rows), in seed order.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    unit = _unit_rows(vectors, "vectors")
    centroids = unit[farthest_first_seeds(unit, k)].copy()
    labels = nearest_interest(unit, centroids)
    for _ in range(max_iter):
        for c in range(len(centroids)):
            members = unit[labels == c]
            if len(members) == 0:
                continue
            mean = members.mean(axis=0)
            norm = np.linalg.norm(mean)
            if norm > 0:
                centroids[c] = mean / norm
        updated = nearest_interest(unit, centroids)
        if np.array_equal(updated, labels):
            break
        labels = updated
    return centroids, labels


def user_interests(history: np.ndarray, k: int = INTERESTS,
                   gamma: float = DEFAULT_PROFILE.gamma,
                   last_n: int = DEFAULT_PROFILE.last_n) -> UserInterests:
    """The user's interests from the last ``last_n`` interaction vectors (oldest first).

    Interests are :func:`spherical_kmeans` clusters (k, or the number of distinct vectors when
    fewer). Interest c weighs Σ_{i in c} γ^(L-1-i) / Σ_i γ^(L-1-i) over the L rows used, the
    weights of :func:`p4r.encoder.profile.decay_weights` (the newest row weighs 1). Interests
    are returned heaviest first; equal weights keep seed order (the newest row's first).

    Args:
        history: ``(L, d)`` interaction vectors, oldest first, L ≥ 1.
        k: the most interests.
        gamma: recency decay (the profile's γ).
        last_n: how many of the newest rows count.

    Returns:
        :class:`UserInterests`.
    """
    rows = np.asarray(history, dtype=np.float64)
    if rows.ndim != 2 or len(rows) == 0:
        raise ValueError("user_interests needs at least one interaction vector")
    rows = rows[-last_n:]
    centroids, labels = spherical_kmeans(rows, k)
    recency = decay_weights(len(rows), gamma)
    weights = np.bincount(labels, weights=recency, minlength=len(centroids)) / recency.sum()
    order = np.argsort(-weights, kind="stable")
    relabel = np.empty_like(order)
    relabel[order] = np.arange(len(order))
    return UserInterests(centroids[order], weights[order], relabel[labels])


# -- attention ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attention:
    """Multi-interest scores of m candidates from n past interactions.

    Attributes:
        scores: ``(m,)`` Σ_j a_j s_j per candidate.
        winner: ``(m,)`` index j (into the history, oldest first) of the largest a_j: the past
            interaction behind the match.
        weight: ``(m,)`` that a_j.
        weights: ``(n, m)`` all attention weights (columns sum to 1).
    """

    scores: np.ndarray
    winner: np.ndarray
    weight: np.ndarray
    weights: np.ndarray


def recency_prior(n: int, gamma: float = DEFAULT_PROFILE.gamma) -> np.ndarray:
    """prior_j = γ^(n-1-j) for rows oldest first (the newest weighs 1): the profile's weights."""
    return decay_weights(n, gamma)


def age_prior(ages: np.ndarray, gamma: float = DEFAULT_PROFILE.gamma) -> np.ndarray:
    """prior_j = γ^(age_j) for given ages (0 = newest); positions, as the profile counts them."""
    return np.power(gamma, np.asarray(ages, dtype=np.float64))


def best_persona_sims(history: np.ndarray,
                      personas: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each history row's best persona cosine per candidate, and which persona it was.

    Args:
        history: ``(n, d)`` interaction vectors.
        personas: one ``(p_i, d)`` matrix per candidate (an item without personas passes its
            summary vector as one row).

    Returns:
        ``(sims (n, m), best (n, m))``: s_ji = max_p cos(e_j, persona_ip) and the argmax p
        (first of equal maxima).
    """
    unit = _unit_rows(history, "history")
    sims = np.empty((len(unit), len(personas)), dtype=np.float64)
    best = np.empty((len(unit), len(personas)), dtype=np.int64)
    for i, matrix in enumerate(personas):
        cos = unit @ _unit_rows(matrix, f"personas[{i}]").T
        best[:, i] = np.argmax(cos, axis=1)
        sims[:, i] = cos[np.arange(len(unit)), best[:, i]]
    return sims, best


def attention_scores(best_sims: np.ndarray, prior: np.ndarray,
                     tau: float = TAU) -> Attention:
    """score_i = Σ_j a_ji s_ji with a_·i = softmax_j(τ s_ji + log prior_j).

    Equivalently a_ji = prior_j·exp(τ s_ji) / Σ_l prior_l·exp(τ s_li): the softmax of τ s
    multiplied by the prior and renormalised. A row with prior 0 gets weight 0.

    Args:
        best_sims: ``(n, m)`` best-persona cosine of history row j for candidate i
            (:func:`best_persona_sims`, or the server's batch of single-row queries).
        prior: ``(n,)`` non-negative recency weights, not all zero (:func:`recency_prior`,
            :func:`age_prior`); their scale does not matter.
        tau: temperature τ.

    Returns:
        :class:`Attention`; the winner is the row with the largest a_j, the newest of equal
        maxima.
    """
    sims = np.asarray(best_sims, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    if sims.ndim != 2 or prior.shape != (sims.shape[0],):
        raise ValueError(f"best_sims (n, m) and prior (n,) disagree: {sims.shape}, "
                         f"{prior.shape}")
    if sims.shape[0] == 0 or np.any(prior < 0) or not np.any(prior > 0):
        raise ValueError("attention needs at least one history row with a positive prior")
    with np.errstate(divide="ignore"):
        logits = tau * sims + np.log(prior)[:, None]
    logits -= logits.max(axis=0, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=0, keepdims=True)
    n = len(sims)
    winner = n - 1 - np.argmax(weights[::-1], axis=0)  # newest of equal maxima
    columns = np.arange(sims.shape[1])
    return Attention(scores=(weights * sims).sum(axis=0), winner=winner,
                     weight=weights[winner, columns], weights=weights)


def closest_interaction(history: np.ndarray,
                        winning: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The default mode's "because": the past interaction closest (cosine) to each winning
    persona, the newest of equal maxima, with that cosine.

    Args:
        history: ``(n, d)`` interaction vectors, oldest first.
        winning: ``(m, d)`` the winning persona vector of each ranked item.

    Returns:
        ``(index (m,), cosine (m,))``.
    """
    cos = _unit_rows(history, "history") @ _unit_rows(winning, "winning").T
    index = len(cos) - 1 - np.argmax(cos[::-1], axis=0)
    return index, cos[index, np.arange(cos.shape[1])]
