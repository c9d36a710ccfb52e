"""Taste-proportional slots: apportionment, slot order, filling, and what it must never do."""

from __future__ import annotations

import numpy as np
import pytest

from p4r.query.diversify import (
    apportion,
    proportional_order,
    proportional_rerank,
    slot_interests,
)
from p4r.query.interests import UserInterests


def test_largest_remainder() -> None:
    w = np.array([0.5, 0.3, 0.2])
    assert apportion(w, 5).tolist() == [3, 1, 1]  # 2.5, 1.5, 1.0: the tie goes to the heavier
    assert apportion(w, 10).tolist() == [5, 3, 2]
    assert apportion(w, 1).tolist() == [1, 0, 0]
    assert apportion(w, 0).tolist() == [0, 0, 0]
    assert apportion(np.array([1.0, 1, 1]), 2).tolist() == [1, 1, 0]  # equal: lower index
    assert apportion(np.array([2.0, 6.0]), 4).tolist() == [1, 3]  # need not sum to 1
    with pytest.raises(ValueError):
        apportion(np.array([0.0, 0.0]), 3)


def test_slot_order_keeps_every_prefix_near_the_shares() -> None:
    w = np.array([0.5, 0.3, 0.2])
    # gaps p·w − held: p1 (.5,.3,.2) -> 0; p2 (0,.6,.4) -> 1; p3 (.5,-.1,.6) -> 2; then 0, 0
    assert slot_interests(w, apportion(w, 5)).tolist() == [0, 1, 2, 0, 0]


def test_each_slot_takes_its_interests_best_remaining_item() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([0, 0, 0, 1, 1, 2])
    w = np.array([0.5, 0.3, 0.2])
    assert proportional_order(scores, labels, w, 5).tolist() == [0, 3, 5, 1, 2]


def test_an_empty_interest_gives_its_slot_to_the_best_remaining_item() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([0, 0, 0, 0, 0, 2])
    assert proportional_order(scores, labels, np.array([0.5, 0.3, 0.2]), 5).tolist() == [
        0, 1, 5, 2, 3]


def _random_case(seed: int, m: int = 20, c: int = 3, d: int = 6):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((c, d))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    weights = rng.dirichlet(np.ones(c))
    order = np.argsort(-weights)
    interests = UserInterests(centroids[order], weights[order], np.zeros(0, dtype=int))
    return rng.uniform(0, 1, m), rng.standard_normal((m, d)), interests


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("k", [1, 5, 10, 25])
def test_never_invents_duplicates_or_drops_items(seed: int, k: int) -> None:
    scores, winning, interests = _random_case(seed)
    items = [object() for _ in scores]
    got = proportional_rerank(items, scores, winning, interests, k)
    assert len(got) == min(k, len(items))
    assert len({id(x) for x in got}) == len(got)
    assert all(any(x is y for y in items) for x in got)  # the caller's own objects


@pytest.mark.parametrize("seed", range(10))
def test_deterministic_and_independent_of_input_order(seed: int) -> None:
    scores, winning, interests = _random_case(seed)
    items = [f"i{j}" for j in range(len(scores))]
    first = proportional_rerank(items, scores, winning, interests, 10)
    assert proportional_rerank(items, scores, winning, interests, 10) == first
    perm = np.random.default_rng(seed + 100).permutation(len(items))
    shuffled = proportional_rerank([items[j] for j in perm], scores[perm], winning[perm],
                                   interests, 10)
    assert shuffled == first


@pytest.mark.parametrize("seed", range(10))
def test_one_interest_is_the_score_order(seed: int) -> None:
    scores, winning, _ = _random_case(seed)
    scores[3] = scores[7]  # a tie keeps input order
    one = UserInterests(np.ones((1, winning.shape[1])), np.array([1.0]), np.zeros(0, int))
    items = list(range(len(scores)))
    expected = sorted(items, key=lambda j: (-scores[j], j))[:10]
    assert proportional_rerank(items, scores, winning, one, 10) == expected


def test_shares_follow_the_weights_when_every_interest_has_items() -> None:
    scores, winning, interests = _random_case(4, m=60)
    from p4r.query.interests import nearest_interest

    labels = nearest_interest(winning, interests.centroids)
    top = proportional_order(scores, labels, interests.weights, 10)
    counts = np.bincount(labels[top], minlength=len(interests))
    expected = apportion(interests.weights, 10)
    assert np.all(counts >= np.minimum(expected, np.bincount(labels, minlength=len(interests))))
    assert proportional_rerank([], np.zeros(0), np.zeros((0, 6)), interests, 5) == []
