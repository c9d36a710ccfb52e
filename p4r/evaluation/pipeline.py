"""``p4r eval run``: generator candidates → Persona4Rec reranking variants → one comparison.

Every variant is evaluated on the same leave-one-out test targets. Reranking indexes only the
history before each user's test target (train + validation), under evaluation-only names, so
the serving index is untouched and nothing leaks.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p4r.datasets.jsonl import write_jsonl_atomic
from p4r.datasets.models import Dataset
from p4r.datasets.split import leave_one_out, write_split
from p4r.encoder.base import TextEncoder
from p4r.encoder.cache import EmbeddingCache
from p4r.evaluation.generators import InteractionMatrix, Model, top_k, train
from p4r.evaluation.metrics import DEFAULT_KS, Evaluation, bootstrap_ci, evaluate
from p4r.indexer import BuildOptions, index_dataset
from p4r.query import Reranker, RerankRequest
from p4r.settings import EncoderSettings, Settings
from p4r.store.base import Backend


@dataclass
class Variant:
    """One row of the comparison."""

    name: str
    evaluation: Evaluation
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EncoderChoice:
    """An encoder to rerank with, and the settings that name it for the query side."""

    label: str
    encoder: TextEncoder
    settings: EncoderSettings


def generator_candidates(data: Dataset, model: Model, k: int, seed: int = 0,
                         epochs: int | None = None) -> tuple[dict[str, list[str]],
                                                             dict[str, set[str]], float]:
    """Train on the train split; top-K per test user, train and validation items excluded."""
    split = leave_one_out(data.interactions)
    pairs = [(it.user_id, it.item_id) for rows in split.train.values() for it in rows]
    pairs += [(it.user_id, it.item_id) for it in split.valid.values()]
    matrix = InteractionMatrix.from_pairs(pairs)
    trained = train(matrix, model, seed=seed, epochs=epochs)
    ranked = top_k(trained, matrix, k)
    candidates = {u: [i for i, _ in ranked[u]] for u in split.test if u in ranked}
    gt = {u: {it.item_id} for u, it in split.test.items()}
    return candidates, gt, trained.seconds


def history_dataset(data: Dataset, name: str, *, personas: bool = True) -> Dataset:
    """A copy with each user's test target removed (and, for the summary-only variant, no
    personas), under an evaluation-only name."""
    split = leave_one_out(data.interactions)
    held_out = {(it.user_id, it.item_id, it.timestamp) for it in split.test.values()}
    copy_ = copy.copy(data)
    copy_.name = name
    copy_.interactions = [i for i in data.interactions
                          if (i.user_id, i.item_id, i.timestamp) not in held_out]
    copy_.personas = dict(data.personas) if personas else {}
    return copy_


def rerank_candidates(settings: Settings, data: Dataset, backend: Backend,
                      choice: EncoderChoice, candidates: dict[str, list[str]],
                      cache: EmbeddingCache | None) -> dict[str, list[str]]:
    """Index ``data`` with the encoder (built as ``p4r index upsert`` builds it from the same
    settings) and rerank every user's candidates."""
    backend.drop_user_state(data.name)  # an evaluation-only name: its history is exactly this
    index_dataset(settings, data, backend=backend, encoder=choice.encoder, cache=cache,
                  options=BuildOptions.from_settings(settings, reindex=True))
    reranker = Reranker(data.name, backend, settings.query, choice.settings)
    users = sorted({i.user_id for i in data.interactions} & set(candidates))
    requests = [RerankRequest(candidates=candidates[u], user_id=u) for u in users]
    results = reranker.rerank_batch(requests, on_unknown="keep")
    ranked = {r.user_id or "": [it.item_id for it in r.items] for r in results}
    # users without any history keep the generator's order
    return {u: ranked.get(u, c) for u, c in candidates.items()}


def run_evaluation(settings: Settings, data: Dataset, backend: Backend, generator: Model,
                   encoders: list[EncoderChoice], *, k: int = 20,
                   ks: tuple[int, ...] = DEFAULT_KS, out: Path,
                   cache: EmbeddingCache | None = None, seed: int = 0,
                   epochs: int | None = None) -> list[Variant]:
    """All variants on one split; writes ``results.json``, ``results.png`` and the candidates."""
    out.mkdir(parents=True, exist_ok=True)
    write_split(leave_one_out(data.interactions), out / "split")
    candidates, gt, seconds = generator_candidates(data, generator, k, seed, epochs)
    write_jsonl_atomic(out / f"candidates_{generator}.jsonl", [
        {"user_id": u, "topk": k, "filter_scope": "train_valid",
         "results": [{"item_id": i} for i in c]} for u, c in candidates.items()])
    variants = [Variant(generator, evaluate(candidates, gt, ks), {"train_seconds": seconds})]
    base = f"{data.name}-eval"
    for number, choice in enumerate(encoders):
        ranked = rerank_candidates(settings, history_dataset(data, f"{base}{number}"),
                                   backend, choice, candidates, cache)
        variants.append(Variant(f"{generator} + persona4rec ({choice.label})",
                                evaluate(ranked, gt, ks)))
    vanilla = encoders[0]
    ranked = rerank_candidates(settings, history_dataset(data, f"{base}-summary",
                                                         personas=False),
                               backend, vanilla, candidates, cache)
    variants.append(Variant(f"{generator} + summary-only ({vanilla.label})",
                            evaluate(ranked, gt, ks)))
    save_report(variants, out)
    return variants


def confidence_intervals(evaluation: Evaluation, seed: int = 0) -> dict[str, list[float]]:
    """Bootstrap 95% interval (resampling users) of every metric."""
    per_user = evaluation.per_user()
    if per_user.size == 0:
        return {}
    return {name: list(bootstrap_ci(per_user[:, k], seed=seed))
            for k, name in enumerate(evaluation.metric_names())}


def save_report(variants: list[Variant], out: Path) -> tuple[Path, Path]:
    """``results.json`` (metrics and their bootstrap intervals per variant) and
    ``results.png`` (NDCG/HR bars)."""
    rows = [{"variant": v.name, **v.evaluation.summary(),
             "ci95": confidence_intervals(v.evaluation), **v.extra} for v in variants]
    json_path = out / "results.json"
    json_path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in variants[0].evaluation.metric_names() if not m.startswith("MRR")]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(metrics)), 4))
    width = 0.8 / len(variants)
    for index, row in enumerate(rows):
        xs = [m + index * width for m in range(len(metrics))]
        ax.bar(xs, [row[m] for m in metrics], width, label=row["variant"])
    ax.set_xticks([m + width * (len(variants) - 1) / 2 for m in range(len(metrics))])
    ax.set_xticklabels(metrics)
    ax.set_ylabel("score")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    png_path = out / "results.png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return json_path, png_path
