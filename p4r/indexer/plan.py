"""What a version holds, point by point: deterministic ids, texts, payloads, and a digest.

Planning reads a validated dataset and nothing else; equal digests mean an identical index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from p4r.datasets.models import Dataset, Interaction
from p4r.encoder.cache import text_hash
from p4r.encoder.templates import interaction_text, persona_text, summary_text
from p4r.errors import ConfigError
from p4r.settings import VectorDatatype
from p4r.store.naming import (
    CATALOG_KINDS,
    ID_SCHEME,
    OPTIONAL_KINDS,
    interaction_key,
    item_key,
    persona_key,
    point_id,
    summary_key,
)
from p4r.store.users import InteractionRecord


@dataclass(frozen=True)
class PlannedPoint:
    """One point to store: deterministic id, the text to embed (or the ids of the points its
    vector is derived from), and its payload."""

    id: int
    text: str
    payload: dict[str, Any]
    sources: tuple[int, ...] = ()



class _IdPlan:
    """Collects planned points of one kind and fails loudly on an id collision."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.points: dict[int, PlannedPoint] = {}
        self.keys: dict[int, tuple[object, ...]] = {}

    def add(self, key: tuple[object, ...], text: str, payload: dict[str, Any],
            sources: tuple[int, ...] = ()) -> int:
        pid = point_id(*key)
        known = self.keys.get(pid)
        if known is not None and known != key:
            raise ConfigError(f"point id collision in {self.kind}: {known!r} and {key!r} hash to "
                              f"{pid}; rename one of them")
        self.keys[pid] = key
        self.points[pid] = PlannedPoint(pid, text, payload, sources)  # the last record wins
        return pid


def plan_points(dataset: Dataset, *, maxsim: bool = False) -> dict[str, list[PlannedPoint]]:
    """Every point of every catalog kind the version holds (personas, summaries, and the
    MaxSim ``items`` only with ``maxsim``), deduplicated by id (the last record wins), plus
    ``interactions``: what the user state syncs from the dataset files (not part of the
    version)."""
    name = dataset.name
    personas, items = _IdPlan("personas"), _IdPlan("items")
    for item_id, item_personas in dataset.personas.items():
        item = dataset.items.get(item_id)
        summary = item.summary if item else ""
        ids = tuple(personas.add(persona_key(name, item_id, p.persona_id),
                                 persona_text(p, summary), {
            "item_id": item_id, "persona_id": p.persona_id, "name": p.name,
            "description": p.description, "rationale": p.rationale,
        }) for p in item_personas)
        items.add(item_key(name, item_id), "", {"item_id": item_id}, tuple(dict.fromkeys(ids)))
    summaries = _IdPlan("summaries")
    for item_id, item in dataset.items.items():
        if item.summary.strip():
            summaries.add(summary_key(name, item_id), summary_text(item), {
                "item_id": item_id, "title": item.title, "summary": item.summary})
    interactions = _IdPlan("interactions")
    for it in dataset.interactions:
        interactions.add(interaction_key(name, it.user_id, it.item_id, it.timestamp),
                         interaction_text(it), {
                             "user_id": it.user_id, "item_id": it.item_id,
                             "ts": it.timestamp, "rating": it.rating})
    plans = {"personas": personas, "summaries": summaries, "items": items,
             "interactions": interactions}
    kinds = [k for k in CATALOG_KINDS if maxsim or k not in OPTIONAL_KINDS] + ["interactions"]
    return {kind: list(plans[kind].points.values()) for kind in kinds}


def point_content(point: PlannedPoint) -> str:
    """Hash of what a stored point is made of (its text, payload and sources): equal hashes
    mean an identical point, so a catalog delta rewrites only points whose hash changed."""
    digest = hashlib.sha256(f"{text_hash(point.text)}\0{point.sources}\0".encode())
    digest.update(repr(sorted(point.payload.items())).encode())
    return digest.hexdigest()[:24]


def plan_digest(plan: dict[str, list[PlannedPoint]],
                vector_datatype: VectorDatatype = "float32") -> str:
    """Hash of every catalog point (id and content) and of how vectors are stored: equal
    digests mean an identical catalog version (the interactions are user state: not in it)."""
    storage = "" if vector_datatype == "float32" else f"{vector_datatype}\0"
    digest = hashlib.sha256(f"catalog{ID_SCHEME}\0{storage}".encode())
    for kind in [k for k in CATALOG_KINDS if k in plan]:
        for point in sorted(plan[kind], key=lambda p: p.id):
            digest.update(f"{kind}\0{point.id}\0{point_content(point)}\0".encode())
    return digest.hexdigest()


def interaction_records(dataset: Dataset) -> tuple[list[InteractionRecord], dict[int, str]]:
    """The dataset's interactions as the user state stores them, and the text each vector
    embeds (the template over the review, its aspects and the item summary), by key."""
    records: list[InteractionRecord] = []
    texts: dict[int, str] = {}
    for it in dataset.interactions:
        record = InteractionRecord(user_id=it.user_id, item_id=it.item_id,
                                   timestamp=it.timestamp, rating=it.rating, text=it.text,
                                   aspects=it.aspects, origin="file")
        records.append(record)
        texts[record.key(dataset.name)] = interaction_text(it)
    return records, texts


def text_of_interactions(dataset: Dataset) -> Callable[[InteractionRecord], str]:
    """The text to embed for any interaction of ``dataset`` (from the files, or live: then
    with the item summary of the files)."""
    _, texts = interaction_records(dataset)
    summaries = {item_id: item.summary for item_id, item in dataset.items.items()}

    def text_of(record: InteractionRecord) -> str:
        known = texts.get(record.key(dataset.name))
        if known is not None:
            return known
        return interaction_text(Interaction(
            user_id=record.user_id, item_id=record.item_id, timestamp=record.timestamp,
            rating=record.rating, text=record.text, aspects=dict(record.aspects or {}) or None,
            item_summary=summaries.get(record.item_id, "")))

    return text_of
