"""Interest clusters and the multi-interest attention oracle, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p4r.query.interests import (
    age_prior,
    attention_scores,
    best_persona_sims,
    closest_interaction,
    farthest_first_seeds,
    nearest_interest,
    recency_prior,
    spherical_kmeans,
    user_interests,
)

R2 = 1 / math.sqrt(2)


def test_seeds_start_newest_then_farthest_newer_on_ties() -> None:
    rows = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [R2, R2, 0]])
    # newest (3); then e2 (cos 0 to it); then e0 and e1 tie at 0.707 -> the newer, e1
    assert farthest_first_seeds(rows, 3) == [3, 2, 1]


def test_interests_hand_computed() -> None:
    rows = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [R2, R2, 0]])
    got = user_interests(rows, k=3, gamma=0.5)
    # clusters {e0, e3}, {e2}, {e1}; recency weights 1/8, 1/4, 1/2, 1 (sum 15/8)
    np.testing.assert_allclose(got.weights, [9 / 15, 4 / 15, 2 / 15])
    assert got.labels.tolist() == [0, 2, 1, 0]
    mean = np.array([1 + R2, R2, 0]) / 2
    np.testing.assert_allclose(got.centroids[0], mean / np.linalg.norm(mean))
    np.testing.assert_allclose(got.centroids[1:], [[0, 0, 1], [0, 1, 0]])


def test_fewer_distinct_vectors_than_k() -> None:
    rows = np.array([[1.0, 0], [0, 1], [1, 0]])
    got = user_interests(rows, k=3, gamma=0.5)
    assert len(got) == 2
    np.testing.assert_allclose(got.weights, [5 / 7, 2 / 7])  # (1/4 + 1) / 7/4, (1/2) / 7/4
    same = user_interests(np.array([[0.0, 2.0], [0, 1]]), k=3)
    assert len(same) == 1 and same.weights.tolist() == [1.0]


def test_interests_use_the_last_n_rows_only() -> None:
    rows = np.array([[0.0, 1]] * 5 + [[1, 0]] * 10)
    got = user_interests(rows, k=3, last_n=10)
    assert len(got) == 1 and got.labels.shape == (10,)


def test_kmeans_moves_centroids_and_is_deterministic() -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((10, 8))
    first = spherical_kmeans(rows, 3)
    second = spherical_kmeans(rows.copy(), 3)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    centroids, labels = first
    np.testing.assert_array_equal(labels, nearest_interest(rows, centroids))  # converged


def test_zero_vector_refused() -> None:
    with pytest.raises(ValueError, match="zero vector"):
        user_interests(np.array([[0.0, 0.0]]))


def test_best_persona_sims() -> None:
    history = np.array([[1.0, 0], [0, 2]])
    sims, best = best_persona_sims(history, [np.array([[1.0, 0], [0, 1]]),
                                             np.array([[0.6, 0.8]])])
    np.testing.assert_allclose(sims, [[1, 0.6], [1, 0.8]])
    assert best.tolist() == [[0, 0], [1, 0]]


def test_attention_hand_computed() -> None:
    sims = np.array([[0.5], [0.2]])
    got = attention_scores(sims, recency_prior(2, 0.5), tau=10.0)
    # a ∝ prior·exp(τ s) = [0.5·e^5, 1·e^2]
    a0 = 0.5 * math.exp(5) / (0.5 * math.exp(5) + math.exp(2))
    assert got.scores[0] == pytest.approx(a0 * 0.5 + (1 - a0) * 0.2, abs=1e-12)
    assert got.winner.tolist() == [0] and got.weight[0] == pytest.approx(a0, abs=1e-12)
    np.testing.assert_allclose(got.weights[:, 0], [a0, 1 - a0])
    assert a0 == pytest.approx(0.909443, abs=1e-6)


def test_attention_equal_sims_follow_the_prior_and_newest_wins_ties() -> None:
    got = attention_scores(np.full((3, 2), 0.4), np.ones(3))
    np.testing.assert_allclose(got.scores, [0.4, 0.4])
    np.testing.assert_allclose(got.weights, np.full((3, 2), 1 / 3))
    assert got.winner.tolist() == [2, 2]
    prior = age_prior(np.array([2, 1, 0]), 0.65)
    np.testing.assert_allclose(prior, recency_prior(3, 0.65))
    np.testing.assert_allclose(attention_scores(np.full((3, 1), 0.3), prior).weights[:, 0],
                               prior / prior.sum())


def test_attention_is_the_renormalised_product_form() -> None:
    rng = np.random.default_rng(0)
    sims, prior = rng.uniform(-1, 1, (10, 7)), recency_prior(10, 0.65)
    got = attention_scores(sims, prior, tau=10.0)
    soft = np.exp(10 * sims) / np.exp(10 * sims).sum(axis=0)
    product = soft * prior[:, None]
    product /= product.sum(axis=0)
    np.testing.assert_allclose(got.weights, product, rtol=1e-12)
    np.testing.assert_allclose(got.scores, (product * sims).sum(axis=0), rtol=1e-12)
    assert got.scores.max() <= sims.max(axis=0).max() + 1e-12
    zero_prior = attention_scores(sims[:2], np.array([0.0, 1.0]))
    np.testing.assert_allclose(zero_prior.scores, sims[1])


def test_attention_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="disagree"):
        attention_scores(np.zeros((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="positive prior"):
        attention_scores(np.zeros((2, 3)), np.zeros(2))


def test_closest_interaction() -> None:
    history = np.array([[1.0, 0], [0, 1], [0, 3]])
    index, cosine = closest_interaction(history, np.array([[0.6, 0.8], [1.0, 0]]))
    assert index.tolist() == [2, 0]  # rows 1 and 2 tie: the newer
    np.testing.assert_allclose(cosine, [0.8, 1.0])


def test_served_because_is_the_oracle_and_the_newest_of_equal_interactions() -> None:
    """The serving path's "because" (pipeline) equals :func:`closest_interaction`, and an
    item the user met twice (equal rows) names the newer interaction."""
    from p4r.query.pipeline import _because, _Plan
    from p4r.query.results import Because
    from p4r.store.base import GroupHit

    rng = np.random.default_rng(7)
    rows = rng.standard_normal((4, 16)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    history = np.stack([rows[0], rows[1], rows[0], rows[2]])  # rows[0] twice: t=1 and t=3
    recent = (("a", 1.0), ("b", 2.0), ("a", 3.0), ("c", 4.0))
    winning = np.stack([rows[0], rows[3], rows[2]])
    ranked = [(GroupHit(f"i{n}", n, 0.5), "persona", f"i{n}") for n in range(3)]
    plan = _Plan(attend=False, spread=False, because=True, k=None, history=history,
                 recent=recent)
    got = _because(ranked, plan, {}, {("persona", n): winning[n] for n in range(3)})
    index, cosine = closest_interaction(history, winning)
    assert got == {f"i{n}": Because(*recent[int(index[n])], pytest.approx(float(cosine[n]),
                                                                          abs=1e-6))
                   for n in range(3)}
    assert got["i0"] == Because("a", 3.0, pytest.approx(1.0, abs=1e-6))  # the newer one
