"""User profile aggregation: the decayed mean the paper defines."""

from __future__ import annotations

import numpy as np
import pytest

from p4r.encoder.profile import decay_weights, user_vector


def test_weights_newest_counts_most() -> None:
    np.testing.assert_allclose(decay_weights(3, 0.5), [0.25, 0.5, 1.0])


def test_hand_computed_two_interactions() -> None:
    e = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    # weights 0.65 (older) and 1 (newer): mean ∝ (0.65, 1)
    expected = np.array([0.65, 1.0]) / np.hypot(0.65, 1.0)
    np.testing.assert_allclose(user_vector(e, gamma=0.65), expected, atol=1e-7)


def test_only_last_n_count() -> None:
    e = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(user_vector(e, gamma=0.5, last_n=2), [0.0, 1.0], atol=1e-7)


def test_gamma_one_is_a_plain_mean() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(5, 8)).astype(np.float32)
    mean = e.mean(axis=0)
    np.testing.assert_allclose(user_vector(e, gamma=1.0), mean / np.linalg.norm(mean),
                               atol=1e-6)


def test_result_is_unit_float32() -> None:
    v = user_vector(np.random.default_rng(1).normal(size=(12, 16)))
    assert v.dtype == np.float32
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-6


def test_empty_history_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        user_vector(np.zeros((0, 4)))
