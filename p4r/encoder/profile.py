"""User profile: temporally decayed mean of the last n interaction embeddings (numpy only)."""

from __future__ import annotations

import numpy as np


def decay_weights(length: int, gamma: float) -> np.ndarray:
    """Weights γ^(L-1-i) for i = 0..L-1, oldest first, so the newest interaction weighs 1."""
    return gamma ** np.arange(length - 1, -1, -1, dtype=np.float64)


def user_vector(embeddings: np.ndarray, gamma: float = 0.65, last_n: int = 10) -> np.ndarray:
    """L2-normalised Σ w_i e_i / Σ w_i over the last ``last_n`` rows (rows in time order).

    Args:
        embeddings: ``(L, d)`` interaction embeddings, oldest first.
        gamma: decay factor in (0, 1].
        last_n: how many of the most recent interactions count.

    Returns:
        A unit ``float32`` vector of shape ``(d,)``.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError("user_vector needs at least one interaction embedding")
    recent = np.asarray(embeddings[-last_n:], dtype=np.float64)
    weights = decay_weights(recent.shape[0], gamma)
    mean = weights @ recent / weights.sum()
    norm = np.linalg.norm(mean)
    if norm == 0.0:
        raise ValueError("user vector is zero; interaction embeddings cancel out")
    return (mean / norm).astype(np.float32)
