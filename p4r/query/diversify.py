"""Taste-proportional lists: the top k positions shared among the user's interests by weight.

A pure function over an already scored list (pure numpy, no store access):

1. **Seats.** k seats are apportioned to the interests by largest remainder (Hamilton): each
   interest first gets ⌊k·w_c⌋, then the seats left go one each to the largest remainders
   k·w_c − ⌊k·w_c⌋; equal remainders go to the heavier interest, then the lower index.
2. **Slot order.** Position p = 1..k goes to the interest, among those with seats left, that is
   furthest behind its share of the first p positions (largest p·w_c − seats it already
   holds); equal gaps go to the heavier interest, then the lower index. Every prefix of the
   list is then near its interest shares, not only the whole top k.
3. **Filling.** An item belongs to the interest whose centroid is nearest (cosine) its winning
   persona. Each position takes its interest's best remaining item (highest score, then
   earliest in the input); when that interest has none left, the position takes the best
   remaining item of any interest.

The output holds items of the input only, each at most once, and exactly min(k, len(input))
of them; the items are the caller's own objects, so their explanations go with them. With one
interest the result is the score order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from p4r.query.interests import UserInterests, nearest_interest

T = TypeVar("T")


def apportion(weights: np.ndarray, seats: int) -> np.ndarray:
    """Largest-remainder seats per interest (ties: heavier interest, then lower index).

    Args:
        weights: ``(c,)`` non-negative interest weights, not all zero (need not sum to 1).
        seats: seats to share, ≥ 0.

    Returns:
        ``(c,)`` int seats summing to ``seats``.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("apportion needs at least one positive weight and none negative")
    quota = seats * w / w.sum()
    out = np.floor(quota).astype(np.int64)
    remainder = quota - out
    order = sorted(range(len(w)), key=lambda c: (-remainder[c], -w[c], c))
    for c in order[: seats - int(out.sum())]:
        out[c] += 1
    return out


def slot_interests(weights: np.ndarray, seats: np.ndarray) -> np.ndarray:
    """Which interest owns each of the ``seats.sum()`` positions, best position first.

    Position p (1-based) goes to the interest with seats left whose gap p·w_c − held_c is
    largest (w normalised to sum 1); ties: heavier interest, then lower index.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    left = np.asarray(seats, dtype=np.int64).copy()
    held = np.zeros(len(w), dtype=np.int64)
    out = []
    for p in range(1, int(left.sum()) + 1):
        open_ = [c for c in range(len(w)) if left[c] > 0]
        c = min(open_, key=lambda c: (-(p * w[c] - held[c]), -w[c], c))
        out.append(c)
        held[c] += 1
        left[c] -= 1
    return np.asarray(out, dtype=np.int64)


def proportional_order(scores: np.ndarray, item_interests: np.ndarray, weights: np.ndarray,
                       k: int) -> np.ndarray:
    """Indices (into the input) of the re-ranked top k.

    Args:
        scores: ``(m,)`` item scores.
        item_interests: ``(m,)`` interest index of each item.
        weights: ``(c,)`` interest weights.
        k: positions to fill; min(k, m) are filled.

    Returns:
        ``(min(k, m),)`` distinct int indices, best position first.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(item_interests, dtype=np.int64)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError("scores and item_interests must be (m,) arrays of one length")
    by_score = list(np.lexsort((np.arange(len(scores)), -scores)))  # score desc, input order
    k = min(k, len(scores))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    queues: dict[int, list[int]] = {}
    for i in by_score:
        queues.setdefault(int(labels[i]), []).append(int(i))
    taken: set[int] = set()
    out: list[int] = []
    for c in slot_interests(weights, apportion(weights, k)):
        queue = queues.get(int(c), [])
        while queue and queue[0] in taken:
            queue.pop(0)
        pick = queue.pop(0) if queue else next(int(i) for i in by_score if int(i) not in taken)
        taken.add(pick)
        out.append(pick)
    return np.asarray(out, dtype=np.int64)


def proportional_rerank(items: Sequence[T], scores: np.ndarray, winning: np.ndarray,
                        interests: UserInterests, k: int) -> list[T]:
    """The top k of ``items`` shared among ``interests`` by weight (see the module doc).

    Args:
        items: the scored items (any objects; they are returned as they are).
        scores: ``(m,)`` their scores.
        winning: ``(m, d)`` each item's winning persona vector (its summary vector when it
            has no personas).
        interests: the user's interests (:func:`p4r.query.interests.user_interests`).
        k: list length.

    Returns:
        min(k, m) of ``items``, best position first.
    """
    if len(items) == 0:
        return []
    labels = nearest_interest(winning, interests.centroids)
    return [items[i] for i in proportional_order(scores, labels, interests.weights, k)]
