"""Explanations: the winning persona of each returned item, read once and cached.

The engine query returns ids and scores only; the persona payloads of the returned items are
read afterwards (a few per request) through a bounded LRU per version, so popular items are
explained from memory. The vectors of winning points (a "because" in the default mode, a
proportional list) are read the same way, through their own LRU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


VectorKey = tuple[str, PointId]  # (kind: "persona" or "summary", point id)
_KIND_VIEW = {"persona": "personas", "summary": "summaries"}


def point_vectors(backend: Backend, served: ServedVersion,
                  keys: Sequence[VectorKey]) -> Steps[dict[VectorKey, np.ndarray]]:
    """Unit vectors of winning persona and summary points, through the version's LRU: at most
    one read per kind (and one more from an overlay's base) for the points not cached (steps:
    the reads are yielded, see :mod:`p4r.query.calls`)."""
    cache = served.vectors_lru
    unique = list(dict.fromkeys(keys))
    found: dict[VectorKey, np.ndarray] = cache.get_many(unique)
    if len(found) == len(unique):
        return found
    for kind, view_kind in _KIND_VIEW.items():
        need = [pid for k, pid in unique if k == kind and (k, pid) not in found]
        view = served.views.get(view_kind)
        if not need or view is None:
            continue
        read = yield from _vectors_in_view(backend, view.primary, view.base, need)
        fresh = {(kind, pid): vector for pid, vector in read.items()}
        cache.put_many(fresh)
        found.update(fresh)
    return found


def _vectors_in_view(backend: Backend, primary: str, base: str | None,
                     ids: list[PointId]) -> Steps[dict[PointId, np.ndarray]]:
    """Unit vectors of ``ids`` read from the collection (an overlay's unmasked items from its
    base), keyed by the ids as asked."""
    out: dict[PointId, np.ndarray] = {}
    for name in (primary, base):
        rest = [pid for pid in ids if pid not in out] if out else ids
        if not rest or name is None:
            break
        read: dict[PointId, np.ndarray] = yield Call(backend, "retrieve_vectors", (name, rest))
        if not read:
            continue
        got = [pid for pid in rest if pid in read]
        if len(got) < len(read):
            # Hits may carry ids as the engine returns them (UUIDs for id scheme 1) and the
            # store answers with strings: match them by their text.
            by_text = {str(pid): vector for pid, vector in read.items()}
            got = [pid for pid in rest if str(pid) in by_text]
            rows = [by_text[str(pid)] for pid in got]
        else:
            rows = [read[pid] for pid in got]
        if got:
            out.update(zip(got, _unit_rows(np.array(rows)), strict=True))
    return out


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a float16 store returns them slightly off), in one
    pass; a row's norm is reduced over that row alone, so it never depends on the batch."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    return rows / norms[:, None]


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
