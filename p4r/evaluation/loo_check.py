"""Real-signal check on the Persona4Rec Yelp sample: held-out item among 19 sampled negatives.

Each user's profile comes from the leave-one-out history; candidates are the held-out item
plus 19 items drawn (fixed seed) from the other items that have summaries; items are scored
by their personas where they have them and by their summary otherwise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p4r.datasets import load_dataset
from p4r.encoder.base import TextEncoder
from p4r.encoder.cache import EmbeddingCache
from p4r.evaluation.io import read_ground_truth, read_interaction_pairs
from p4r.evaluation.metrics import bootstrap_ci, evaluate
from p4r.indexer import BuildOptions, index_dataset
from p4r.query import Reranker, RerankRequest
from p4r.settings import EncoderSettings, Settings
from p4r.store.base import Backend

HISTORY_LOO = "3.5_history_loo.jsonl"
HISTORY_FULL = "3.5_history.jsonl"
GROUND_TRUTH = "3.5_gt.jsonl"


@dataclass
class LooCheck:
    """Metrics with bootstrap intervals, beside the random baseline."""

    users: int
    candidates: int
    metrics: dict[str, dict[str, float]]
    random_baseline: dict[str, float]
    persona_scored: int
    summary_scored: int

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"users": self.users, "candidates": self.candidates, "metrics": self.metrics,
                "random_baseline": self.random_baseline,
                "persona_scored": self.persona_scored, "summary_scored": self.summary_scored}


def sample_candidates(gt: dict[str, set[str]], pool: list[str], negatives: int,
                      seed: int) -> dict[str, list[str]]:
    """Held-out item plus ``negatives`` others from ``pool`` per user, shuffled, fixed seed."""
    rng = random.Random(seed)
    out = {}
    for user in sorted(gt):
        target = sorted(gt[user])[0]
        others = [i for i in pool if i != target]
        cands = [target, *rng.sample(others, negatives)]
        rng.shuffle(cands)
        out[user] = cands
    return out


def run_loo_check(
    settings: Settings,
    root: Path,
    backend: Backend,
    encoder: TextEncoder,
    encoder_settings: EncoderSettings,
    *,
    dataset: str = "yelp-loo",
    negatives: int = 19,
    seed: int = 0,
    users: int | None = None,
    cache: EmbeddingCache | None = None,
) -> LooCheck:
    """Index the leave-one-out sample, rerank each user's 20 candidates, score and bootstrap."""
    data = load_dataset(dataset, root, history_file=HISTORY_LOO)
    gt = read_ground_truth(root / GROUND_TRUTH)
    if users is not None:
        keep = sorted(gt)[:users]
        gt = {u: gt[u] for u in keep}
        data.interactions = [i for i in data.interactions if i.user_id in gt]
    pool = sorted({item for _, item in read_interaction_pairs(root / HISTORY_FULL)})
    candidates = sample_candidates(gt, pool, negatives, seed)
    needed = {i for c in candidates.values() for i in c} | {i.item_id for i in data.interactions}
    data.items = {k: v for k, v in data.items.items() if k in needed or k in data.personas}
    backend.drop_user_state(dataset)  # the check's own name: its history is exactly this
    index_dataset(settings, data, backend=backend, encoder=encoder, cache=cache,
                  options=BuildOptions.from_settings(settings, reindex=True))
    reranker = Reranker(dataset, backend, settings.query, encoder_settings)
    requests = [RerankRequest(candidates=candidates[u], user_id=u) for u in sorted(gt)]
    results = reranker.rerank_batch(requests)
    ranked = {r.user_id or "": [it.item_id for it in r.items] for r in results}
    evaluation = evaluate(ranked, gt, ks=(5, 10))
    per_user = evaluation.per_user()
    names = evaluation.metric_names()
    metrics: dict[str, dict[str, float]] = {}
    for name in ("HR@5", "HR@10", "NDCG@10", "MRR@10"):
        column = per_user[:, names.index(name)]
        low, high = bootstrap_ci(column, seed=seed)
        metrics[name] = {"value": float(column.mean()), "ci_low": low, "ci_high": high}
    n = negatives + 1
    random_baseline = {"HR@5": 5 / n, "HR@10": 10 / n,
                       "NDCG@10": float(np.mean([1 / np.log2(r + 1) for r in range(1, 11)])
                                        * 10 / n)}
    explanations = [it.explanation for r in results for it in r.items]
    return LooCheck(users=len(gt), candidates=n, metrics=metrics,
                    random_baseline=random_baseline,
                    persona_scored=explanations.count("persona"),
                    summary_scored=explanations.count("summary"))
