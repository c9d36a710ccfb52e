"""Does training help users it never saw? User-disjoint cross-validation, vanilla vs trained.

Users are split into folds. For each fold, the encoder is trained on the other users'
alignments (with its own held-out users for early stopping) and both encoders rank the fold's
users' next items (every interaction after their first) among negatives of the same exposure.
The gain is reported with a bootstrap interval that resamples whole users.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p4r.datasets.models import Dataset
from p4r.encoder.cache import EmbeddingCache
from p4r.encoder.ranking import (
    cluster_bootstrap,
    item_texts,
    next_item_events,
    sample_task,
    score_task,
    target_exposure,
    user_histories,
)
from p4r.encoder.train_run import own_items, train_encoder
from p4r.encoder.training import TrainingTuple
from p4r.settings import Settings


@dataclass
class CrossValidation:
    """Per-event figures of both encoders over every fold, and what each fold kept."""

    users: list[str] = field(default_factory=list)
    vanilla: list[np.ndarray] = field(default_factory=list)  # rows: HR@5, NDCG@10
    trained: list[np.ndarray] = field(default_factory=list)
    kept_epochs: list[int | None] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, seed: int = 0) -> dict[str, Any]:
        """Means, user-clustered 95% intervals and the paired gain per metric."""
        v, t = np.concatenate(self.vanilla, axis=1), np.concatenate(self.trained, axis=1)
        out: dict[str, Any] = {"events": int(v.shape[1]), "users": len(set(self.users)),
                               "folds": len(self.vanilla), "kept_epochs": self.kept_epochs,
                               "seconds": round(self.seconds, 1)}
        for row, name in enumerate(("HR@5", "NDCG@10")):
            entry = {}
            for label, values in (("vanilla", v[row]), ("trained", t[row]),
                                  ("gain", t[row] - v[row])):
                low, high = cluster_bootstrap(values, self.users, seed=seed)
                entry[label] = {"value": float(values.mean()), "ci_low": low, "ci_high": high}
            out[name] = entry
        return out


def user_folds(users: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """Seeded disjoint folds of users."""
    order = sorted(users)
    random.Random(seed).shuffle(order)
    return [sorted(order[k::folds]) for k in range(folds)]


def cross_validate(dataset: Dataset, tuples: Sequence[TrainingTuple], settings: Settings,
                   work: Path, *, folds: int = 5, seed: int = 0,
                   cache: EmbeddingCache | None = None,
                   on_fold: Callable[[int, dict[str, float]], None] | None = None
                   ) -> CrossValidation:
    """Train once per fold without its users; rank their next items with both encoders."""
    started = time.perf_counter()
    histories = user_histories(dataset.interactions)
    texts = item_texts(dataset)
    own = own_items(dataset)
    result = CrossValidation()
    for k, test_users in enumerate(user_folds(sorted(histories), folds, seed)):
        run = train_encoder(dataset, tuples, settings, work / f"fold-{k}", cache=cache,
                            exclude=test_users, resume=False)
        exposure = target_exposure(t.item_id for t in tuples if t.user_id not in test_users)
        events = next_item_events(histories, test_users, settings.query.last_n, texts)
        task = sample_task(events, texts, exposure, own, settings.train.val_candidates,
                           seed + 1000 + k)
        vanilla = np.stack(score_task(task, run.base_embed, settings.query.gamma))
        trained = np.stack(score_task(task, run.embed, settings.query.gamma))
        result.users += task.users
        result.vanilla.append(vanilla)
        result.trained.append(trained)
        result.kept_epochs.append(run.report.best_epoch)
        if on_fold is not None:
            on_fold(k, {"events": len(task.events), "vanilla_hr5": float(vanilla[0].mean()),
                        "trained_hr5": float(trained[0].mean()),
                        "kept_epoch": run.report.best_epoch})
    result.seconds = time.perf_counter() - started
    return result
