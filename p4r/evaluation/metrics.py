"""Leave-one-out ranking metrics (HR, MRR, NDCG at K) and scenario slices.

Conventions follow the Persona4Rec reference evaluator: the first relevant item's 1-based
rank r decides everything; HR@K = [r ≤ K], MRR@K = 1/r, NDCG@K = 1/log2(r + 1) (one relevant
item, so the ideal DCG is 1). ``[PAD]`` entries occupy ranks like any item.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_KS = (5, 10, 20)


def first_relevant_rank(ranked: Sequence[str], relevant: set[str] | frozenset[str]) -> int | None:
    """1-based rank of the first relevant item, or None when none is listed."""
    for rank, item in enumerate(ranked, start=1):
        if item in relevant:
            return rank
    return None


def user_metrics(rank: int | None, ks: Iterable[int]) -> dict[str, float]:
    """HR/MRR/NDCG at each K for one user whose first relevant item sits at ``rank``."""
    out: dict[str, float] = {}
    for k in ks:
        hit = rank is not None and rank <= k
        out[f"HR@{k}"] = 1.0 if hit else 0.0
        out[f"MRR@{k}"] = 1.0 / rank if hit and rank else 0.0
        out[f"NDCG@{k}"] = 1.0 / math.log2(rank + 1) if hit and rank else 0.0
    return out


@dataclass(frozen=True)
class Evaluation:
    """Per-user ranks and the averaged metrics over the evaluated users."""

    users: list[str]
    ranks: list[int | None]
    ks: tuple[int, ...]

    def per_user(self) -> np.ndarray:
        """``(users, metrics)`` matrix in :meth:`metric_names` order (for bootstraps)."""
        return np.array([[user_metrics(r, self.ks)[m] for m in self.metric_names()]
                         for r in self.ranks], dtype=np.float64)

    def metric_names(self) -> list[str]:
        """``HR@k, MRR@k, NDCG@k`` for each k."""
        return [f"{m}@{k}" for k in self.ks for m in ("HR", "MRR", "NDCG")]

    def summary(self, subset: set[str] | None = None) -> dict[str, float]:
        """Mean of each metric over all users, or over ``subset``."""
        keep = [i for i, u in enumerate(self.users) if subset is None or u in subset]
        names = self.metric_names()
        if not keep:
            return {name: float("nan") for name in names} | {"users": 0}
        matrix = self.per_user()[keep]
        return {name: float(v) for name, v in zip(names, matrix.mean(axis=0), strict=True)} | {
            "users": len(keep)}


def evaluate(
    candidates: Mapping[str, Sequence[str]],
    ground_truth: Mapping[str, set[str]],
    ks: Sequence[int] = DEFAULT_KS,
) -> Evaluation:
    """Score every user with a ground truth; a user without candidates counts as a miss."""
    users = list(ground_truth)
    ranks = [first_relevant_rank(candidates.get(u, ()), ground_truth[u]) for u in users]
    return Evaluation(users=users, ranks=ranks, ks=tuple(ks))


def bootstrap_ci(
    values: np.ndarray, *, rounds: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of per-user values."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(rounds, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def scenario_groups(
    interactions: Iterable[tuple[str, str]], ground_truth: Mapping[str, set[str]],
    high: float = 80.0, low: float = 20.0,
) -> dict[str, set[str]]:
    """Users split into warm/cold by their review counts, and by head/tail target items.

    Warm users have a review count at or above the ``high`` percentile of users' counts, cold
    ones at or below the ``low`` percentile; head/tail use items' review counts the same way,
    applied to each user's held-out item. Users or items absent from ``interactions`` are left
    out of the slices (nothing is known about them), not counted as cold or tail.
    """
    user_counts: dict[str, int] = {}
    item_counts: dict[str, int] = {}
    for user, item in interactions:
        user_counts[user] = user_counts.get(user, 0) + 1
        item_counts[item] = item_counts.get(item, 0) + 1
    groups: dict[str, set[str]] = {"warm": set(), "cold": set(), "head": set(), "tail": set()}
    if not user_counts:
        return groups
    u_hi, u_lo = np.percentile(list(user_counts.values()), [high, low])
    i_hi, i_lo = np.percentile(list(item_counts.values()), [high, low])
    for user, targets in ground_truth.items():
        count = user_counts.get(user)
        if count is not None and count >= u_hi:
            groups["warm"].add(user)
        if count is not None and count <= u_lo:
            groups["cold"].add(user)
        known = [item_counts[t] for t in targets if t in item_counts]
        if known and max(known) >= i_hi:
            groups["head"].add(user)
        if known and max(known) <= i_lo:
            groups["tail"].add(user)
    return groups
