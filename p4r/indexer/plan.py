"""What a version holds, point by point: deterministic ids, texts, payloads, and a digest.

Planning reads a validated dataset and nothing else; equal digests mean an identical index.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from p4r.datasets.models import Dataset, Interaction
from p4r.encoder.cache import text_hash
from p4r.encoder.templates import interaction_text, persona_text, summary_text
from p4r.errors import ConfigError
from p4r.settings import DEFAULT_PROFILE, ProfileParams, VectorDatatype
from p4r.store.naming import (
    DEFAULT_KINDS,
    ID_SCHEME,
    KINDS,
    interaction_key,
    item_key,
    persona_key,
    point_id,
    profile_key,
    summary_key,
)


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


def plan_points(
    dataset: Dataset, profile: ProfileParams | None = None, *, maxsim: bool = False
) -> dict[str, list[PlannedPoint]]:
    """Every point of every kind the version holds, deduplicated by id (the last record wins);
    the MaxSim ``items`` kind only with ``maxsim``."""
    name = dataset.name
    profile = profile or DEFAULT_PROFILE
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
    interactions, profiles = _IdPlan("interactions"), _IdPlan("profiles")
    by_user: dict[str, dict[int, Interaction]] = {}
    for it in dataset.interactions:
        pid = interactions.add(interaction_key(name, it.user_id, it.item_id, it.timestamp),
                               interaction_text(it), {
                                   "user_id": it.user_id, "item_id": it.item_id,
                                   "ts": it.timestamp, "rating": it.rating})
        by_user.setdefault(it.user_id, {})[pid] = it
    for user_id, history in by_user.items():
        ordered = sorted(history.items(), key=lambda kv: (kv[1].timestamp, kv[1].item_id))
        recent = ordered[-profile.last_n:]
        profiles.add(profile_key(name, user_id), "", {
            "user_id": user_id, "count": len(ordered),
            "recent": [{"item_id": it.item_id, "ts": it.timestamp} for _, it in recent],
        }, tuple(pid for pid, _ in recent))
    plans = {"personas": personas, "summaries": summaries, "interactions": interactions,
             "profiles": profiles, "items": items}
    kinds = KINDS if maxsim else DEFAULT_KINDS
    return {kind: list(plans[kind].points.values()) for kind in kinds}


def plan_digest(plan: dict[str, list[PlannedPoint]], profile: ProfileParams | None = None,
                vector_datatype: VectorDatatype = "float32") -> str:
    """Hash of every id, text, payload and source, and of how vectors are stored: equal
    digests mean an identical index (float32 digests are those of versions built before the
    storage could be chosen)."""
    profile = profile or DEFAULT_PROFILE
    storage = "" if vector_datatype == "float32" else f"{vector_datatype}\0"
    digest = hashlib.sha256(
        f"ids{ID_SCHEME}\0{profile.gamma}\0{profile.last_n}\0{storage}".encode())
    for kind in [k for k in KINDS if k in plan]:
        for point in sorted(plan[kind], key=lambda p: p.id):
            digest.update(f"{kind}\0{point.id}\0{text_hash(point.text)}\0{point.sources}\0"
                          .encode())
            digest.update(repr(sorted(point.payload.items())).encode())
    return digest.hexdigest()
