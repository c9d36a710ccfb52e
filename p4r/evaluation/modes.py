"""Offline quality study of the ranking modes (issue 19) on the Persona4Rec Yelp sample.

Three modes rank the same candidates from the same vectors (numpy, no Qdrant; the serving
path is made equal to these oracles separately):

* ``default``: the decayed-mean profile (γ = 0.65 over the last 10 interactions), each item
  scored by its best persona cosine; that persona is the item's winning persona.
* ``interests``: attention over the last 10 interaction vectors
  (:func:`p4r.query.interests.attention_scores`, τ = 10, recency prior γ^age); the winning
  persona is the attention winner's best persona for the item.
* ``proportional``: ``default`` re-ranked by :func:`p4r.query.diversify.proportional_order`
  over the first 10 positions, with k = 3 interests (:func:`p4r.query.interests.user_interests`);
  the rest of the list keeps the score order.

Items without personas are scored by their summary vector as their one persona. Scores tie
by item id. τ, γ, k and the list length were fixed before the study; nothing is tuned here.

Two protocols, each with the vanilla MiniLM encoder by default:

* **leave-one-out** (``loo``): each user's history without the held-out item
  (``3.5_history_loo.jsonl``), the held-out item (``3.5_gt.jsonl``) among 19 negatives drawn
  from the sample's other items (:func:`p4r.evaluation.loo_check.sample_candidates`, seed 0).
* **rolling next-item** (``rolling``): every interaction after a user's 5th, ranked from the
  (up to 10) interactions before it, among 19 negatives of the target's exposure bucket that
  the user never interacted with (:func:`p4r.encoder.ranking.sample_task`, the encoder's
  validation protocol); an item's exposure is how often it occurs in the sample's
  interactions (there is no training split here).

Per event: HR@5, HR@10, NDCG@10, MRR@10 of the target and TDD of the list
(:mod:`p4r.evaluation.tdd`). Means are over events; 95% intervals are percentile bootstraps
that resample users (2000 rounds, seed 0) — :func:`~p4r.evaluation.metrics.bootstrap_ci` when
each user has one event, :func:`~p4r.encoder.ranking.cluster_bootstrap` otherwise — and every
difference against ``default`` is paired (the same resampled users for both modes).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p4r.datasets import load_dataset
from p4r.datasets.models import Dataset
from p4r.encoder.base import Embed, TextEncoder
from p4r.encoder.cache import EmbeddingCache, encode_cached
from p4r.encoder.ranking import (
    cluster_bootstrap,
    item_texts,
    next_item_events,
    sample_task,
    target_exposure,
    user_histories,
    user_matrix,
)
from p4r.encoder.templates import interaction_text
from p4r.encoder.train_run import own_items
from p4r.evaluation.io import read_ground_truth, read_interaction_pairs
from p4r.evaluation.loo_check import GROUND_TRUTH, HISTORY_FULL, HISTORY_LOO, sample_candidates
from p4r.evaluation.metrics import bootstrap_ci, first_relevant_rank, user_metrics
from p4r.evaluation.tdd import LIST_CUT, taste_distribution_distance
from p4r.query.diversify import proportional_order
from p4r.query.interests import (
    INTERESTS,
    TAU,
    UserInterests,
    attention_scores,
    best_persona_sims,
    nearest_interest,
    recency_prior,
    user_interests,
)
from p4r.settings import DEFAULT_PROFILE

MODES = ("default", "interests", "proportional")
METRICS = ("HR@5", "HR@10", "NDCG@10", "MRR@10", "TDD")


@dataclass(frozen=True)
class ModeParams:
    """The study's fixed parameters (chosen before it ran)."""

    tau: float = TAU
    gamma: float = DEFAULT_PROFILE.gamma
    last_n: int = DEFAULT_PROFILE.last_n
    interests: int = INTERESTS
    list_k: int = 10  # positions the proportional re-rank shares (the longest metric cut)
    tdd_cut: int = LIST_CUT
    min_history: int = 5  # rolling: interactions before the first ranked one


@dataclass(frozen=True)
class Event:
    """One ranking: the user's last interaction vectors (oldest first), the candidates and
    which of them is the target."""

    user_id: str
    history: np.ndarray
    candidates: tuple[str, ...]
    target: str


@dataclass(frozen=True)
class Ranked:
    """A full ranking and the winning persona vector of each item in it."""

    items: list[str]
    winning: np.ndarray


@dataclass(frozen=True)
class Study:
    """Events of one protocol and every candidate's persona matrix (unit rows)."""

    name: str
    events: list[Event]
    personas: dict[str, np.ndarray]
    persona_items: int  # candidates scored by personas (the rest by their summary)


# -- ranking -----------------------------------------------------------------------------------
def rank_event(event: Event, personas: Mapping[str, np.ndarray], mode: str,
               params: ModeParams = ModeParams(),
               interests: UserInterests | None = None) -> Ranked:
    """Rank ``event``'s candidates in ``mode`` (see the module doc); ties by item id."""
    ids = sorted(event.candidates)
    matrices = [personas[i] for i in ids]
    if mode == "interests":
        sims, best = best_persona_sims(event.history, matrices)
        attention = attention_scores(sims, recency_prior(len(sims), params.gamma), params.tau)
        scores = attention.scores
        winning = np.stack([m[best[attention.winner[i], i]] for i, m in enumerate(matrices)])
    elif mode in ("default", "proportional"):
        user = user_matrix([np.asarray(event.history, dtype=np.float64)], params.gamma)[0]
        cosines = [m @ user for m in matrices]
        scores = np.array([c.max() for c in cosines])
        winning = np.stack([m[int(np.argmax(c))] for m, c in zip(matrices, cosines,
                                                                  strict=True)])
    else:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    order = [int(i) for i in np.lexsort((np.arange(len(ids)), -scores))]
    if mode == "proportional":
        interests = interests or event_interests(event, params)
        labels = nearest_interest(winning, interests.centroids)
        top = [int(i) for i in proportional_order(scores, labels, interests.weights,
                                                  params.list_k)]
        chosen = set(top)
        order = top + [i for i in order if i not in chosen]
    return Ranked([ids[i] for i in order], winning[order])


def event_interests(event: Event, params: ModeParams = ModeParams()) -> UserInterests:
    """The user's interests at the event (the same clustering for TDD and proportional)."""
    return user_interests(event.history, params.interests, params.gamma, params.last_n)


def event_metrics(event: Event, ranked: Ranked, interests: UserInterests,
                  params: ModeParams = ModeParams()) -> dict[str, float]:
    """HR@5, HR@10, NDCG@10, MRR@10 of the target and TDD of the ranked list."""
    rank = first_relevant_rank(ranked.items, {event.target})
    values = user_metrics(rank, (5, 10))
    values["TDD"] = taste_distribution_distance(interests, ranked.winning, params.tdd_cut)
    return {name: values[name] for name in METRICS}


def score_study(study: Study, params: ModeParams = ModeParams()) -> dict[str, np.ndarray]:
    """Per mode, an ``(events, len(METRICS))`` matrix of per-event figures."""
    out = {mode: np.zeros((len(study.events), len(METRICS))) for mode in MODES}
    for row, event in enumerate(study.events):
        interests = event_interests(event, params)
        for mode in MODES:
            ranked = rank_event(event, study.personas, mode, params, interests)
            figures = event_metrics(event, ranked, interests, params)
            out[mode][row] = [figures[name] for name in METRICS]
    return out


# -- intervals ---------------------------------------------------------------------------------
def interval(values: np.ndarray, users: Sequence[str], seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap of the mean over events, resampling users."""
    if len(set(users)) == len(users):
        return bootstrap_ci(np.asarray(values, dtype=np.float64), seed=seed)
    return cluster_bootstrap(np.asarray(values, dtype=np.float64), users, seed=seed)


def compare(figures: Mapping[str, np.ndarray], users: Sequence[str],
            seed: int = 0) -> dict[str, Any]:
    """Mean and interval of every metric per mode, and of every paired difference against
    ``default``, with whether that interval includes zero."""
    modes: dict[str, dict[str, dict[str, float]]] = {}
    differences: dict[str, dict[str, dict[str, Any]]] = {}
    for mode, matrix in figures.items():
        modes[mode] = {}
        for col, name in enumerate(METRICS):
            low, high = interval(matrix[:, col], users, seed)
            modes[mode][name] = {"value": float(matrix[:, col].mean()), "ci_low": low,
                                 "ci_high": high}
        if mode == "default":
            continue
        differences[mode] = {}
        for col, name in enumerate(METRICS):
            diff = matrix[:, col] - figures["default"][:, col]
            low, high = interval(diff, users, seed)
            differences[mode][name] = {"value": float(diff.mean()), "ci_low": low,
                                       "ci_high": high, "includes_zero": low <= 0.0 <= high}
    return {"modes": modes, "vs_default": differences}


# -- the two protocols -------------------------------------------------------------------------
def _persona_matrices(dataset: Dataset, items: set[str], embed: Embed) -> dict[str, np.ndarray]:
    texts = item_texts(dataset)
    missing = sorted(items - texts.keys())
    if missing:
        raise ValueError(f"{len(missing)} candidate items have neither personas nor a summary "
                         f"(first: {missing[0]!r})")
    ordered = sorted(items)
    flat = [t for item in ordered for t in texts[item]]
    vectors = _unit(embed(flat))
    out, start = {}, 0
    for item in ordered:
        out[item] = vectors[start:start + len(texts[item])]
        start += len(texts[item])
    return out


def _unit(vectors: np.ndarray) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float64)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def _history_vectors(histories: Sequence[Sequence[str]], embed: Embed) -> list[np.ndarray]:
    texts = sorted({t for h in histories for t in h})
    vectors = _unit(embed(texts))
    row = {t: i for i, t in enumerate(texts)}
    return [vectors[[row[t] for t in h]] for h in histories]


def loo_study(root: Path, embed: Embed, *, negatives: int = 19, seed: int = 0,
              users: int | None = None, params: ModeParams = ModeParams()) -> Study:
    """Leave-one-out events of the Persona4Rec sample in ``root`` (see the module doc)."""
    data = load_dataset("yelp", root, history_file=HISTORY_LOO)
    gt = read_ground_truth(root / GROUND_TRUTH)
    if users is not None:
        gt = {u: gt[u] for u in sorted(gt)[:users]}
    pool = sorted({item for _, item in read_interaction_pairs(root / HISTORY_FULL)})
    candidates = sample_candidates(gt, pool, negatives, seed)
    histories = user_histories(data.interactions)
    kept = [u for u in sorted(gt) if histories.get(u)]
    texts = [[interaction_text(r) for r in histories[u][-params.last_n:]] for u in kept]
    vectors = _history_vectors(texts, embed)
    events = [Event(u, h, tuple(candidates[u]), sorted(gt[u])[0])
              for u, h in zip(kept, vectors, strict=True)]
    needed = {i for e in events for i in e.candidates}
    return Study("loo", events, _persona_matrices(data, needed, embed),
                 sum(1 for i in needed if data.personas.get(i)))


def rolling_study(root: Path, embed: Embed, *, negatives: int = 19, seed: int = 0,
                  users: int | None = None, params: ModeParams = ModeParams()) -> Study:
    """Rolling next-item events of the Persona4Rec sample in ``root`` (see the module doc)."""
    data = load_dataset("yelp", root)
    histories = user_histories(data.interactions)
    chosen = sorted(histories)[:users] if users is not None else sorted(histories)
    texts = item_texts(data)
    events = [e for e in next_item_events(histories, chosen, params.last_n, texts)
              if len(e.history) >= min(params.min_history, params.last_n)]
    exposure = target_exposure(it.item_id for it in data.interactions)
    task = sample_task(events, texts, exposure, own_items(data), negatives, seed)
    vectors = _history_vectors([e.history for e in task.events], embed)
    out = [Event(e.user_id, h, tuple(c), e.target)
           for e, h, c in zip(task.events, vectors, task.candidates, strict=True)]
    needed = {i for e in out for i in e.candidates}
    return Study("rolling", out, _persona_matrices(data, needed, embed),
                 sum(1 for i in needed if data.personas.get(i)))


def summarize_study(study: Study, params: ModeParams = ModeParams(),
                    seed: int = 0) -> dict[str, Any]:
    """The study's figures, intervals and counts as one dict."""
    figures = score_study(study, params)
    users = [e.user_id for e in study.events]
    sizes = [len(e.candidates) for e in study.events]
    return {"users": len(set(users)), "events": len(study.events),
            "candidates_min": min(sizes, default=0), "candidates_max": max(sizes, default=0),
            "candidate_items": len(study.personas), "persona_items": study.persona_items,
            **compare(figures, users, seed)}


def quality_table(root: Path, *, encoder: TextEncoder | None = None,
                  cache: EmbeddingCache | None = None, negatives: int = 19, seed: int = 0,
                  users: int | None = None, params: ModeParams = ModeParams(),
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The quality table of the three modes under both protocols.

    Args:
        root: the Persona4Rec Yelp sample folder (``../shared/data/persona4rec-yelp-sample``).
        encoder: the text encoder; the vanilla MiniLM (``Encoder(EncoderSettings())``) when
            None.
        cache: an embedding cache; a temporary one (removed afterwards) when None.
        negatives: sampled negatives per event.
        seed: the seed of the negatives and of the bootstraps.
        users: only the first ``users`` users (sorted ids), for quick checks.
        params: the fixed study parameters.
        progress: called with a line as each protocol finishes.

    Returns:
        ``{"protocol": {...}, "loo": {...}, "rolling": {...}}``; each protocol has counts,
        ``modes`` (metric → value, ci_low, ci_high) and ``vs_default`` (the same for each
        paired difference, plus ``includes_zero``).
    """
    if encoder is None:
        from p4r.encoder.model import Encoder
        from p4r.settings import EncoderSettings

        encoder = Encoder(EncoderSettings())
    scratch = None
    if cache is None:
        scratch = Path(tempfile.mkdtemp(prefix="p4r-modes-"))
        cache = EmbeddingCache(scratch / "embeddings.sqlite")
    try:
        def embed(texts: Sequence[str]) -> np.ndarray:
            return encode_cached(texts, encoder.fingerprint, encoder.encode, cache)

        table: dict[str, Any] = {"protocol": {
            **asdict(params), "negatives": negatives, "seed": seed,
            "encoder": {"model": encoder.fingerprint.model, "dim": encoder.fingerprint.dim,
                        "weights_sha256": encoder.fingerprint.weights_sha256[:12]},
            "bootstrap": "percentile 95%, 2000 rounds, users resampled, paired differences"}}
        for build in (loo_study, rolling_study):
            study = build(root, embed, negatives=negatives, seed=seed, users=users,
                          params=params)
            table[study.name] = summarize_study(study, params, seed)
            if progress is not None:
                progress(f"{study.name}: {len(study.events)} events")
        return table
    finally:
        if scratch is not None:
            cache.close()
            shutil.rmtree(scratch, ignore_errors=True)


def format_table(table: Mapping[str, Any]) -> str:
    """Markdown: per protocol, each mode's figures and each difference against default."""
    lines = []
    for name in ("loo", "rolling"):
        if name not in table:
            continue
        part = table[name]
        lines += [f"### {name}: {part['users']} users, {part['events']} events, "
                  f"{part['candidates_min']}–{part['candidates_max']} candidates", "",
                  "| mode | " + " | ".join(METRICS) + " |",
                  "|---|" + "---|" * len(METRICS)]
        for mode, figures in part["modes"].items():
            cells = [f"{f['value']:.4f} [{f['ci_low']:.4f}, {f['ci_high']:.4f}]"
                     for f in (figures[m] for m in METRICS)]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
        for mode, figures in part["vs_default"].items():
            cells = [f"{f['value']:+.4f} [{f['ci_low']:+.4f}, {f['ci_high']:+.4f}]"
                     + (" (0 in CI)" if f["includes_zero"] else "")
                     for f in (figures[m] for m in METRICS)]
            lines.append(f"| {mode} − default | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
