"""Upsert pipeline: dataset → texts → embeddings (cached) → a complete collection version.

A build always goes into a version that no alias points at; the aliases move only once every
point is in and counted. Re-running an unchanged build is a no-op; re-running after a crash
resumes the unfinished version, skipping points already stored. Every alias move is written to
the swap history in the store (pending before the move, applied after; see
:mod:`p4r.migrations.record`), and old versions stay until :func:`prune_versions` removes them,
so serving processes can keep answering from the version they hold until they refresh.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from p4r.collections import catalog
from p4r.collections.base import Backend, CollectionSpec
from p4r.collections.naming import KINDS, alias_name, collection_name, format_ts, point_id
from p4r.datasets.models import Dataset
from p4r.encoder.cache import EmbeddingCache, encode_cached, text_hash
from p4r.encoder.fingerprint import Fingerprint
from p4r.encoder.templates import interaction_text, persona_text, summary_text
from p4r.errors import ConfigError
from p4r.migrations import SwapRecord, apply_migrations, begin_swap, finish_swap, reconcile
from p4r.migrations import swap_history as read_swap_history

KEYWORD_INDEXES = {
    "personas": ("item_id",),
    "summaries": ("item_id",),
    "interactions": ("user_id", "item_id"),
}


class TextEncoder(Protocol):
    """What the pipeline needs from an encoder."""

    fingerprint: Fingerprint

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit float32 embeddings, one row per text."""
        ...


@dataclass(frozen=True)
class PlannedPoint:
    """One point to store: deterministic id, the text to embed, and its payload."""

    id: str
    text: str
    payload: dict[str, Any]


@dataclass
class UpsertReport:
    """What an upsert did."""

    dataset: str
    version: int
    action: str  # "created", "resumed", "reused" (a complete, unpublished version) or "unchanged"
    counts: dict[str, int] = field(default_factory=dict)
    encoded: int = 0
    seconds: float = 0.0


def plan_points(dataset: Dataset) -> dict[str, list[PlannedPoint]]:
    """Every point of every kind, deduplicated by id (the last record wins)."""
    name = dataset.name
    personas: dict[str, PlannedPoint] = {}
    for item_id, item_personas in dataset.personas.items():
        item = dataset.items.get(item_id)
        summary = item.summary if item else ""
        for p in item_personas:
            pid = point_id(name, item_id, p.persona_id)
            personas[pid] = PlannedPoint(pid, persona_text(p, summary), {
                "item_id": item_id, "persona_id": p.persona_id, "name": p.name,
                "description": p.description, "rationale": p.rationale,
            })
    summaries: dict[str, PlannedPoint] = {}
    for item_id, item in dataset.items.items():
        if not item.summary.strip():
            continue
        pid = point_id(name, item_id)
        summaries[pid] = PlannedPoint(pid, summary_text(item), {
            "item_id": item_id, "title": item.title, "summary": item.summary,
        })
    interactions: dict[str, PlannedPoint] = {}
    for it in dataset.interactions:
        pid = point_id(name, it.user_id, it.item_id, format_ts(it.timestamp))
        interactions[pid] = PlannedPoint(pid, interaction_text(it), {
            "user_id": it.user_id, "item_id": it.item_id, "ts": it.timestamp,
            "rating": it.rating,
        })
    return {"personas": list(personas.values()), "summaries": list(summaries.values()),
            "interactions": list(interactions.values())}


def plan_digest(plan: dict[str, list[PlannedPoint]]) -> str:
    """Hash of every id, text and payload: equal digests mean an identical index."""
    digest = hashlib.sha256()
    for kind in KINDS:
        for point in sorted(plan[kind], key=lambda p: p.id):
            digest.update(f"{kind}\0{point.id}\0{text_hash(point.text)}\0".encode())
            digest.update(repr(sorted(point.payload.items())).encode())
    return digest.hexdigest()


def _batches(seq: Sequence[PlannedPoint], size: int) -> Iterable[Sequence[PlannedPoint]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def check_encoder_compatible(backend: Backend, dataset: str, fp: Fingerprint) -> None:
    """Refuse to upsert with an encoder that differs from the live version's."""
    live = catalog.live_version(backend, dataset)
    if live is None:
        return
    meta = catalog.version_metadata(backend, dataset, live)
    stored = Fingerprint.from_dict(meta["encoder"])
    if stored.dim != fp.dim:
        raise ConfigError(
            f"vector dimension mismatch: {collection_name(dataset, 'personas', live)} holds "
            f"{stored.dim}-d vectors from {stored.model}, but P4R_ENCODER__MODEL={fp.model} "
            f"makes {fp.dim}-d vectors; pass --reindex to build a new version with this encoder"
        )
    if stored != fp:
        raise ConfigError(
            f"encoder fingerprint mismatch: {collection_name(dataset, 'personas', live)} was "
            f"built with {stored.short()}, the configured encoder is {fp.short()}; "
            "pass --reindex to build a new version with it"
        )


def upsert_dataset(
    dataset: Dataset,
    backend: Backend,
    encoder: TextEncoder,
    *,
    batch_size: int = 256,
    cache: EmbeddingCache | None = None,
    reindex: bool = False,
    progress: bool | None = None,
    layout: dict[str, int | None] | None = None,
    on_batch: Callable[[str, int], None] | None = None,
) -> UpsertReport:
    """Build (or resume, or confirm) the index of ``dataset``; move aliases when complete.

    Args:
        dataset: validated dataset.
        backend: where the collections live.
        encoder: text encoder; its fingerprint is stored with the collections.
        batch_size: points per encode/upsert batch.
        cache: optional persistent embedding cache.
        reindex: allow an encoder different from the live version's (builds a new version).
        progress: show progress bars (None: only on a terminal).
        layout: server collection layout (shard_number, replication_factor, ...).
        on_batch: called after each stored batch with (kind, points so far); tests use it.

    Returns:
        An :class:`UpsertReport`.
    """
    started = time.perf_counter()
    fp = encoder.fingerprint
    apply_migrations(backend)  # llm-style: the store layout is brought up to date on open
    reconcile(backend, dataset.name)  # settle a swap a previous run crashed in
    if not reindex:
        check_encoder_compatible(backend, dataset.name, fp)
    plan = plan_points(dataset)
    digest = plan_digest(plan)
    counts = {kind: len(plan[kind]) for kind in KINDS}

    live = catalog.live_version(backend, dataset.name)
    if live is not None:
        meta = catalog.version_metadata(backend, dataset.name, live)
        if meta.get("digest") == digest and meta.get("encoder") == fp.as_dict():
            return UpsertReport(dataset.name, live, "unchanged", counts, 0,
                                time.perf_counter() - started)

    all_versions = catalog.versions(backend, dataset.name)
    version, action = None, "created"
    for number, kinds in all_versions.items():
        if number == live:
            continue
        meta = backend.get_metadata(kinds["personas"]) if "personas" in kinds else {}
        same = (set(kinds) == set(KINDS) and meta.get("digest") == digest
                and meta.get("encoder") == fp.as_dict())
        if same and meta.get("state") in ("building", "complete"):
            # A complete one is left over from a crash before its swap, or is an older version
            # of exactly this build (a rollback): publish it instead of building a copy.
            version = number
            action = "resumed" if meta.get("state") == "building" else "reused"
        elif meta.get("state") != "complete":
            for name in kinds.values():  # an abandoned build of other data: discard it
                backend.drop_collection(name)
    if version is None:
        version = max([*all_versions, 0]) + 1
        metadata = {"dataset": dataset.name, "version": version, "state": "building",
                    "digest": digest, "encoder": fp.as_dict(), "counts": counts,
                    "created_at": time.time()}
        layout = layout or {}
        for kind in KINDS:
            backend.create_collection(CollectionSpec(
                name=collection_name(dataset.name, kind, version), dim=fp.dim,
                keyword_indexes=KEYWORD_INDEXES[kind], metadata={**metadata, "kind": kind},
                **layout))

    encoded = 0

    def count_encode(texts: Sequence[str]) -> np.ndarray:
        nonlocal encoded
        encoded += len(texts)
        return encoder.encode(texts)

    for kind in KINDS:
        name = collection_name(dataset.name, kind, version)
        points = plan[kind]
        with tqdm(total=len(points), desc=f"{dataset.name} {kind}", unit="pt",
                  disable=None if progress is None else not progress, leave=False) as bar:
            done = 0
            for batch in _batches(points, batch_size):
                present = backend.existing_ids(name, [p.id for p in batch]) \
                    if action != "created" else set()
                todo = [p for p in batch if p.id not in present]
                if todo:
                    vectors = encode_cached([p.text for p in todo], fp, count_encode, cache)
                    backend.upsert(name, [p.id for p in todo], vectors,
                                   [p.payload for p in todo])
                done += len(batch)
                bar.update(len(batch))
                if on_batch:
                    on_batch(kind, done)

    for kind in KINDS:
        name = collection_name(dataset.name, kind, version)
        stored = backend.count(name)
        if stored != counts[kind]:
            raise ConfigError(f"{name} holds {stored} points, expected {counts[kind]}; "
                              "re-run the upsert to resume")
    for kind in KINDS:
        backend.update_metadata(collection_name(dataset.name, kind, version),
                                {"state": "complete", "completed_at": time.time()})
    publish_version(backend, dataset.name, version, fp.as_dict(), counts)
    return UpsertReport(dataset.name, version, action, counts, encoded,
                        time.perf_counter() - started)


def swap_reason(
    backend: Backend, dataset: str, from_version: int | None, encoder: dict[str, Any]
) -> str:
    """Why the aliases move: ``created`` (first version), ``reindex`` (new encoder), ``update``."""
    if from_version is None:
        return "created"
    previous = catalog.version_metadata(backend, dataset, from_version).get("encoder")
    return "update" if previous == encoder else "reindex"


def publish_version(
    backend: Backend, dataset: str, version: int, encoder: dict[str, Any], counts: dict[str, int]
) -> SwapRecord:
    """Move the aliases to a complete ``version``, recorded pending before and applied after.

    A crash between the steps leaves a pending entry that the next upsert (or
    ``p4r-index migrate``) settles from where the aliases actually point.
    """
    live = catalog.live_version(backend, dataset)
    entry = begin_swap(backend, SwapRecord(
        dataset=dataset, from_version=live, to_version=version, encoder=encoder,
        counts=dict(counts), reason=swap_reason(backend, dataset, live, encoder)))
    catalog.swap_aliases(backend, dataset, version)
    return finish_swap(backend, entry)


def dataset_status(backend: Backend, dataset: str) -> dict[str, Any]:
    """Counts and identity of the live index of ``dataset`` (NotFoundError if none)."""
    personas = catalog.live_collection(backend, dataset, "personas")
    summaries = catalog.live_collection(backend, dataset, "summaries")
    interactions = catalog.live_collection(backend, dataset, "interactions")
    meta = backend.get_metadata(personas)
    return {
        "dataset": dataset,
        "backend": backend.kind,
        "personas": backend.count(personas),
        "items": backend.count_distinct(personas, "item_id"),
        "summaries": backend.count(summaries),
        "interactions": backend.count(interactions),
        "users": backend.count_distinct(interactions, "user_id"),
        "collection": personas,
        "alias": alias_name(dataset, "personas"),
        "version": meta.get("version"),
        "encoder": meta.get("encoder"),
        "versions": {
            str(number): backend.get_metadata(kinds["personas"]).get("state", "unknown")
            for number, kinds in catalog.versions(backend, dataset).items() if "personas" in kinds
        },
        "migrations": [r.as_dict() for r in read_swap_history(backend, dataset)],
    }


def drop_dataset(backend: Backend, dataset: str) -> list[str]:
    """Remove the aliases first (queries stop at once), then every version's collections.

    The swap history is kept (it is an audit log) and gets a ``dropped`` entry.
    """
    apply_migrations(backend)
    live = catalog.live_version(backend, dataset)
    entry = None
    if live is not None:
        entry = begin_swap(backend, SwapRecord(dataset=dataset, from_version=live,
                                               to_version=None, reason="dropped"))
    backend.set_aliases({alias_name(dataset, k): None for k in KINDS})
    if entry is not None:
        finish_swap(backend, entry)
    dropped = []
    for kinds in catalog.versions(backend, dataset).values():
        for name in kinds.values():
            backend.drop_collection(name)
            dropped.append(name)
    return dropped


@dataclass(frozen=True)
class PrunedVersion:
    """A version :func:`prune_versions` removes (or would remove), and why."""

    version: int
    state: str  # "complete", "building" or "broken" (some collections or metadata missing)
    collections: tuple[str, ...]


def prune_plan(backend: Backend, dataset: str, keep: int = 1) -> list[PrunedVersion]:
    """Versions :func:`prune_versions` would delete; the live one is never among them.

    Args:
        backend: the store.
        dataset: dataset name.
        keep: complete versions to keep, counting the live one (1: only the live version);
            the others kept are the newest. Building and broken versions are always listed.
    """
    if keep < 1:
        raise ConfigError(f"--keep must be at least 1 (the live version), got {keep}")
    live = catalog.live_version(backend, dataset)
    stored = catalog.versions(backend, dataset)
    complete: list[int] = []
    doomed: list[PrunedVersion] = []
    for number, kinds in stored.items():
        if number == live:
            continue
        meta = backend.get_metadata(kinds["personas"]) if "personas" in kinds else {}
        state = str(meta.get("state", "broken"))
        if state == "complete" and set(kinds) == set(KINDS):
            complete.append(number)
            continue
        state = state if set(kinds) == set(KINDS) else "broken"
        doomed.append(PrunedVersion(number, state, _drop_order(kinds)))
    # Without a live version nothing is protected by the alias, so every complete one is kept.
    extra = keep - 1 if live is not None else len(complete)
    kept = set(sorted(complete, reverse=True)[:extra])
    for number in complete:
        if number not in kept:
            doomed.append(PrunedVersion(number, "complete", _drop_order(stored[number])))
    return sorted(doomed, key=lambda v: v.version)


def _drop_order(kinds: dict[str, str]) -> tuple[str, ...]:
    """Personas last: until it goes, the version still reads as itself and a re-run finishes."""
    return tuple(kinds[k] for k in sorted(kinds, key=lambda k: k == "personas"))


def prune_versions(backend: Backend, dataset: str, keep: int = 1) -> list[PrunedVersion]:
    """Delete old complete versions beyond ``keep`` and every abandoned build; never the live one.

    Serving processes still holding a pruned version fail on their next query, so prune after
    they have refreshed (see :meth:`p4r.query.Reranker.refresh`), and not while an upsert of
    the same dataset runs (its building version would be removed).
    """
    removed = []
    for doomed in prune_plan(backend, dataset, keep):
        if catalog.live_version(backend, dataset) == doomed.version:
            continue  # the alias moved to it since the plan was made: it is live now
        for name in doomed.collections:
            backend.drop_collection(name)
        removed.append(doomed)
    return removed
