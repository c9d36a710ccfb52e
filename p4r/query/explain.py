"""Explanations: the winning persona of each returned item, read once and cached.

The engine query returns ids and scores only; the persona payloads of the returned items are
read afterwards (a few per request) through a bounded LRU per version, so popular items are
explained from memory.
"""

from __future__ import annotations

from p4r.errors import NotFoundError
from p4r.query.binding import ServedVersion
from p4r.query.calls import Call, Steps
from p4r.query.results import PersonaInfo
from p4r.query.scoring import Ranked
from p4r.store.base import Backend, PointId


def persona_payloads(backend: Backend, served: ServedVersion,
                     ranked_lists: list[list[Ranked]]) -> Steps[dict[PointId, PersonaInfo]]:
    """Persona details for the returned persona hits only, through the version's LRU (steps:
    the store read is yielded, see :mod:`p4r.query.calls`)."""
    cache = served.personas_lru
    hits = [hit for ranked in ranked_lists for hit, kind, _ in ranked
            if kind == "persona" and hit is not None]
    found: dict[PointId, PersonaInfo] = cache.get_many([hit.point_id for hit in hits])
    need: list[PointId] = []
    for hit in hits:
        if hit.point_id in found:
            continue
        if hit.payload is not None:
            found[hit.point_id] = PersonaInfo.from_payload(hit.payload)
        else:
            need.append(hit.point_id)
    if need:
        view = served.views["personas"]
        payloads = yield Call(backend, "retrieve_payloads", (view.primary, need))
        rest = [pid for pid in need if pid not in payloads]
        if rest and view.base is not None:  # an overlay's unmasked items live in its base
            payloads = {**payloads, **(yield Call(backend, "retrieve_payloads",
                                                  (view.base, rest)))}
        read = {pid: PersonaInfo.from_payload(payload or {})
                for pid, payload in payloads.items()}
        cache.put_many(read)
        found.update(read)
    return found


def item_personas(backend: Backend, served: ServedVersion, dataset: str,
                  item_id: str) -> Steps[list[PersonaInfo]]:
    """Every persona of an item, by persona id (the store reads are yielded steps)."""
    view = served.views["personas"]
    records = yield Call(backend, "scroll_all", (view.primary,), {"match": ("item_id", item_id)})
    if not records and view.base is not None and item_id not in view.masked:
        records = yield Call(backend, "scroll_all", (view.base,),
                             {"match": ("item_id", item_id)})
    found = sorted((PersonaInfo.from_payload(r.payload or {}) for r in records),
                   key=lambda p: p.persona_id)
    if not found:
        raise NotFoundError(f"item {item_id!r} has no personas in dataset {dataset!r}")
    return found
