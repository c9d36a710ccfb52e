"""Next-item ranking on users the encoder never saw: the validation signal for training.

Each event is one user's next interaction given the interactions before it. Its candidates are
the target plus ``n`` sampled items with the same *exposure* as the target (how often the item
was a training target, in buckets), none of them the user's own items, so that an encoder cannot
win by pushing trained items up or down. Items are scored like the reranker scores them: the
best cosine over the item's persona texts (its summary text when it has no personas) with the
user's decayed-mean vector.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from p4r.datasets.models import Dataset, Interaction
from p4r.encoder.base import Embed
from p4r.encoder.profile import decay_weights
from p4r.encoder.templates import interaction_text, persona_text, summary_text

EXPOSURE_EDGES = (0, 1, 2, 4)  # buckets: 0, 1, 2-3, 4+ times a training target


@dataclass(frozen=True)
class NextItemEvent:
    """A user's history (interaction texts, oldest first) and the item that came next."""

    user_id: str
    history: tuple[str, ...]
    target: str


@dataclass(frozen=True)
class RankingTask:
    """Events with their candidate lists (target first) and every candidate item's texts."""

    events: tuple[NextItemEvent, ...]
    candidates: tuple[tuple[str, ...], ...]
    item_texts: Mapping[str, tuple[str, ...]]

    @property
    def users(self) -> list[str]:
        """The user of each event (for bootstraps clustered by user)."""
        return [e.user_id for e in self.events]


def item_texts(dataset: Dataset) -> dict[str, tuple[str, ...]]:
    """What the index scores an item by: its persona texts, else its summary text."""
    out: dict[str, tuple[str, ...]] = {}
    for item_id, item in dataset.items.items():
        personas = dataset.personas.get(item_id)
        if personas:
            out[item_id] = tuple(persona_text(p, item.summary) for p in personas)
        elif item.summary or item.title:
            out[item_id] = (summary_text(item),)
    return out


def user_histories(interactions: Iterable[Interaction]) -> dict[str, list[Interaction]]:
    """Interactions per user in time order (ties by item id)."""
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for it in interactions:
        by_user[it.user_id].append(it)
    for rows in by_user.values():
        rows.sort(key=lambda r: (r.timestamp, r.item_id))
    return dict(by_user)


def next_item_events(histories: Mapping[str, Sequence[Interaction]], users: Iterable[str],
                     last_n: int, known: Mapping[str, object]) -> list[NextItemEvent]:
    """Every interaction after a user's first whose item is in ``known``, as an event."""
    events = []
    for user in sorted(users):
        rows = histories.get(user, [])
        for k in range(1, len(rows)):
            if rows[k].item_id in known:
                history = tuple(interaction_text(r) for r in rows[max(0, k - last_n):k])
                events.append(NextItemEvent(user, history, rows[k].item_id))
    return events


def exposure_bucket(count: int) -> int:
    """Bucket of an item's training-target count: 0, 1, 2-3 or 4+."""
    return max(i for i, edge in enumerate(EXPOSURE_EDGES) if count >= edge)


def sample_task(events: Sequence[NextItemEvent], texts: Mapping[str, tuple[str, ...]],
                exposure: Mapping[str, int], own: Mapping[str, set[str]], n: int,
                seed: int) -> RankingTask:
    """Draw ``n`` negatives per event from items in the target's exposure bucket that the user
    never interacted with (fewer when the bucket is small), with a fixed seed."""
    rng = random.Random(seed)
    buckets: dict[int, list[str]] = defaultdict(list)
    for item in sorted(texts):
        buckets[exposure_bucket(exposure.get(item, 0))].append(item)
    candidates = []
    for event in events:
        pool = [i for i in buckets[exposure_bucket(exposure.get(event.target, 0))]
                if i not in own.get(event.user_id, ()) and i != event.target]
        candidates.append((event.target, *rng.sample(pool, min(n, len(pool)))))
    needed = {i for c in candidates for i in c}
    return RankingTask(tuple(events), tuple(candidates),
                       {i: texts[i] for i in sorted(needed)})


def user_matrix(histories: Sequence[np.ndarray], gamma: float) -> np.ndarray:
    """Unit decayed-mean vectors, one per history of unit embeddings (oldest first)."""
    out = np.empty((len(histories), histories[0].shape[1]), dtype=np.float64)
    for row, emb in enumerate(histories):
        w = decay_weights(len(emb), gamma)
        out[row] = w @ emb / w.sum()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def score_task(task: RankingTask, embed: Embed, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-event HR@5 and NDCG@10 of the target (ties count against it)."""
    if not task.events:
        return np.zeros(0), np.zeros(0)
    texts = sorted({t for e in task.events for t in e.history}
                   | {t for ts in task.item_texts.values() for t in ts})
    vectors = np.asarray(embed(texts), dtype=np.float64)
    row = {t: i for i, t in enumerate(texts)}
    users = user_matrix([vectors[[row[t] for t in e.history]] for e in task.events], gamma)
    hr, ndcg = np.zeros(len(task.events)), np.zeros(len(task.events))
    for k, (user, cands) in enumerate(zip(users, task.candidates, strict=True)):
        scores = [max(vectors[[row[t] for t in task.item_texts[i]]] @ user) for i in cands]
        rank = 1 + sum(s >= scores[0] for s in scores[1:])
        hr[k] = float(rank <= 5)
        ndcg[k] = 1.0 / np.log2(rank + 1) if rank <= 10 else 0.0
    return hr, ndcg


def cluster_bootstrap(values: np.ndarray, clusters: Sequence[str], *, rounds: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling whole users (their events correlate)."""
    keys = sorted(set(clusters))
    groups = [np.flatnonzero(np.asarray(clusters) == k) for k in keys]
    sums = np.array([values[g].sum() for g in groups])
    sizes = np.array([len(g) for g in groups])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(groups), size=(rounds, len(groups)))
    means = sums[pick].sum(axis=1) / sizes[pick].sum(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def target_exposure(targets: Iterable[str]) -> dict[str, int]:
    """How often each item is a training target."""
    return dict(Counter(targets))
