"""Taste Distribution Distance (TDD): does a list reflect the user's whole range of tastes?

Definition (pure numpy):

* **Interests.** Spherical k-means (cosine, k = 3) over the user's last 10 interaction vectors,
  oldest first, seeded deterministically (no random seed): the newest vector, then repeatedly
  the vector whose highest cosine to the seeds so far is lowest (ties: the newer one). With
  fewer than k distinct vectors, k is the number of distinct vectors.
  (:func:`p4r.query.interests.user_interests`.)
* **Interest shares p.** p_c = Σ_{i in c} γ^(L-1-i) / Σ_i γ^(L-1-i) over the L vectors used,
  γ = 0.65: the profile's recency weights (the newest vector weighs 1).
* **List shares q.** Each of the list's first 5 items counts for the interest whose centroid is
  nearest (cosine; ties to the heavier interest) its winning persona vector (its summary vector
  when it has no personas); q_c = count_c / N with N = min(5, list length).
* **TDD** = ½ Σ_c |p_c − q_c|, the total variation distance, in [0, 1]. 0 means the list's top
  shares its tastes as the user's recent history does.

A list shorter than 5 uses all its items; an empty list has no distribution (ValueError).
"""

from __future__ import annotations

import numpy as np

from p4r.query.interests import INTERESTS, UserInterests, nearest_interest, user_interests
from p4r.settings import DEFAULT_PROFILE

LIST_CUT = 5
"""How many of the list's first items TDD reads."""


def list_shares(winning: np.ndarray, interests: UserInterests, cut: int = LIST_CUT) -> np.ndarray:
    """q: the share of the list's first ``cut`` winning personas nearest each interest.

    Args:
        winning: ``(m, d)`` winning persona vectors in list order (m ≥ 1).
        interests: the user's interests.
        cut: how many of the first items count.

    Returns:
        ``(c,)`` shares summing to 1.
    """
    rows = np.asarray(winning, dtype=np.float64)
    if rows.ndim != 2 or len(rows) == 0:
        raise ValueError("TDD needs a list of at least one item")
    labels = nearest_interest(rows[:cut], interests.centroids)
    return np.bincount(labels, minlength=len(interests)) / len(labels)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """½ Σ |p_i − q_i|."""
    return float(0.5 * np.abs(np.asarray(p, dtype=np.float64)
                              - np.asarray(q, dtype=np.float64)).sum())


def taste_distribution_distance(interests: UserInterests, winning: np.ndarray,
                                cut: int = LIST_CUT) -> float:
    """TDD of a list against interests already computed (see the module doc)."""
    return total_variation(interests.weights, list_shares(winning, interests, cut))


def tdd(history: np.ndarray, winning: np.ndarray, *, k: int = INTERESTS,
        gamma: float = DEFAULT_PROFILE.gamma, last_n: int = DEFAULT_PROFILE.last_n,
        cut: int = LIST_CUT) -> float:
    """TDD from the raw inputs: interests of ``history`` then the distance of ``winning``.

    Args:
        history: ``(L, d)`` interaction vectors, oldest first.
        winning: ``(m, d)`` winning persona vectors of the ranked list, best first.
        k: interests (3).
        gamma: recency decay (0.65).
        last_n: history rows used (10).
        cut: list items read (5).

    Returns:
        The total variation distance in [0, 1].
    """
    return taste_distribution_distance(user_interests(history, k, gamma, last_n), winning, cut)
