"""Taste Distribution Distance against hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from p4r.evaluation.tdd import list_shares, taste_distribution_distance, tdd, total_variation
from p4r.query.interests import user_interests

HISTORY = np.array([[1.0, 0], [0, 1], [1, 0]])  # two distinct tastes: k drops from 3 to 2
# recency weights (γ = 0.5) 1/4, 1/2, 1 -> shares (1/4 + 1)/(7/4) = 5/7 and 2/7
LIST = np.array([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 0.8], [1, 0]])


def test_hand_computed_tdd() -> None:
    interests = user_interests(HISTORY, k=3, gamma=0.5)
    np.testing.assert_allclose(interests.weights, [5 / 7, 2 / 7])
    np.testing.assert_allclose(list_shares(LIST, interests), [2 / 5, 3 / 5])  # 6th not read
    assert tdd(HISTORY, LIST, gamma=0.5) == pytest.approx(11 / 35, abs=1e-12)


def test_short_list_uses_all_its_items() -> None:
    assert tdd(HISTORY, LIST[[0, 2]], gamma=0.5) == pytest.approx(5 / 7 - 1 / 2, abs=1e-12)
    with pytest.raises(ValueError, match="at least one item"):
        tdd(HISTORY, np.zeros((0, 2)))


def test_bounds_and_perfect_match() -> None:
    history = np.array([[1.0, 0]] * 4)  # one taste
    assert tdd(history, np.array([[1.0, 0.1]] * 5)) == 0.0
    interests = user_interests(HISTORY, gamma=0.5)
    assert taste_distribution_distance(interests, np.array([[0.0, 1]] * 5)) == pytest.approx(
        5 / 7)
    assert total_variation([1, 0], [0, 1]) == 1.0


def test_defaults_are_the_profile_and_k3() -> None:
    rng = np.random.default_rng(0)
    history, winning = rng.standard_normal((12, 5)), rng.standard_normal((8, 5))
    explicit = tdd(history, winning, k=3, gamma=0.65, last_n=10, cut=5)
    assert tdd(history, winning) == explicit
    assert 0.0 <= explicit <= 1.0
