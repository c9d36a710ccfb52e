"""One training run from a dataset and its alignments: hold out users, measure the vanilla
encoder on them, train (head, LoRA or full), keep the best epoch. ``p4r-train``, the
cross-validation in :mod:`p4r.evaluation.training_cv` and ``p4r eval run --train`` call this."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p4r.datasets.models import Dataset
from p4r.encoder.base import Embed
from p4r.encoder.cache import EmbeddingCache, encode_cached
from p4r.encoder.head import HeadTrainer
from p4r.encoder.judge_free import next_item_alignments, training_histories
from p4r.encoder.loop import EpochLog, TrainReport
from p4r.encoder.model import Encoder
from p4r.encoder.ranking import (
    RankingTask,
    item_texts,
    next_item_events,
    sample_task,
    score_task,
    target_exposure,
)
from p4r.encoder.training import EncoderTrainer, TrainingTuple, build_tuples, split_by_user
from p4r.settings import Settings


@dataclass
class TrainPlan:
    """What a run trains on and what it validates with."""

    train: list[TrainingTuple]
    val: list[TrainingTuple]
    held_out: list[str]
    validation: RankingTask | None
    catalogue: dict[str, tuple[str, ...]]
    own: dict[str, set[str]]


@dataclass
class TrainedEncoder:
    """A finished run: its report and a function embedding texts as the saved model does."""

    report: TrainReport
    embed: Embed
    base_embed: Embed
    plan: TrainPlan


def tuples_for(dataset: Dataset, settings: Settings, cache: EmbeddingCache,
               alignments: Path | None, folder: Path) -> list[TrainingTuple]:
    """Training tuples from ``alignments``, or, when none are given, from next-item
    self-labels (no LLM) written to ``folder/alignments.next-item.jsonl``."""
    if alignments is None:
        from p4r.datasets.jsonl import write_jsonl_atomic

        embed, _ = cached_embedder(settings.encoder.model, settings, cache)
        alignments = folder / "alignments.next-item.jsonl"
        write_jsonl_atomic(alignments, next_item_alignments(
            dataset, embed, last_n=settings.query.last_n, gamma=settings.query.gamma))
    return build_tuples(dataset, alignments, settings.query.last_n)


def own_items(dataset: Dataset) -> dict[str, set[str]]:
    """Every item each user interacted with (never a negative for that user)."""
    out: dict[str, set[str]] = {}
    for it in dataset.interactions:
        out.setdefault(it.user_id, set()).add(it.item_id)
    return out


def plan_training(dataset: Dataset, tuples: Sequence[TrainingTuple], settings: Settings,
                  *, exclude: Iterable[str] = ()) -> TrainPlan:
    """Drop ``exclude``d users, hold out a share of the rest, build their ranking task."""
    excluded = set(exclude)
    kept = [t for t in tuples if t.user_id not in excluded]
    s = settings.train
    train, val, held = split_by_user(kept, s.val_fraction, s.seed)
    catalogue = item_texts(dataset)
    own = own_items(dataset)
    validation = None
    if held:
        events = next_item_events(training_histories(dataset), held, settings.query.last_n,
                                  catalogue)
        exposure = target_exposure(t.item_id for t in train)
        validation = sample_task(events, catalogue, exposure, own, s.val_candidates, s.seed)
    return TrainPlan(train, val, held, validation, catalogue, own)


def cached_embedder(model: str, settings: Settings,
                    cache: EmbeddingCache | None) -> tuple[Embed, int | None]:
    """The frozen encoder as an embed function through the cache, and its sequence length."""
    encoder = Encoder(settings.encoder.model_copy(update={"model": model}))

    def embed(texts: Sequence[str]) -> np.ndarray:
        return encode_cached(texts, encoder.fingerprint, encoder.encode, cache)

    return embed, encoder.fingerprint.max_seq_length


def train_encoder(dataset: Dataset, tuples: Sequence[TrainingTuple], settings: Settings,
                  out: Path, *, base_model: str | None = None,
                  cache: EmbeddingCache | None = None, resume: bool = True,
                  exclude: Iterable[str] = (),
                  on_epoch: Callable[[EpochLog], None] | None = None,
                  on_baseline: Callable[[dict[str, float]], None] | None = None,
                  ) -> TrainedEncoder:
    """Plan, measure the vanilla encoder on the held-out users, train, and save to ``out``."""
    base = base_model or settings.encoder.model
    plan = plan_training(dataset, tuples, settings, exclude=exclude)
    base_embed, length = cached_embedder(base, settings, cache)
    baseline = None
    if plan.validation is not None:
        hr, ndcg = score_task(plan.validation, base_embed, settings.query.gamma)
        baseline = {"HR@5": float(hr.mean()), "NDCG@10": float(ndcg.mean()),
                    "events": len(hr), "users": len(plan.held_out)}
        if on_baseline is not None:
            on_baseline(baseline)
    s = settings.train
    if s.method == "head":
        head = HeadTrainer(base, s, gamma=settings.query.gamma, embed_base=base_embed,
                           max_seq_length=length)
        report = head.fit(plan.train, plan.catalogue, plan.own, out,
                          validation=plan.validation, on_epoch=on_epoch)
        embed: Embed = head.encoder().encode
    else:
        trainer = EncoderTrainer(base, s, gamma=settings.query.gamma,
                                 threads=settings.encoder.threads, max_seq_length=length)
        report = trainer.fit(plan.train, plan.val, out, resume=resume,
                             validation=plan.validation, on_epoch=on_epoch)
        embed = trainer.encode_numpy
    report.baseline = baseline
    return TrainedEncoder(report, embed, base_embed, plan)
