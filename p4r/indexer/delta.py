"""Catalog deltas: what changed between the live catalog and the new plan, point by point.

Every stored catalog point carries the hash of what it is made of (``h``, see
:func:`~p4r.indexer.plan.point_content`), so comparing the new plan with the live version
(its base, for an Edge overlay) needs no vectors and no dataset files of the old version. An
item is *touched* when any of its points in any kind was added, changed or removed; the
engine's strategy then writes the touched items (:mod:`p4r.store.deltas`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from p4r.indexer.plan import PlannedPoint, point_content
from p4r.store.base import Backend
from p4r.store.deltas import CatalogChange
from p4r.store.layout import LAYOUTS
from p4r.store.manifest import VersionManifest
from p4r.store.naming import collection_name

Encode = Callable[[Sequence[PlannedPoint]], np.ndarray]


def catalog_change(backend: Backend, live: VersionManifest, plan: dict[str, list[PlannedPoint]],
                   new: VersionManifest, encode: Encode, *,
                   limit: float) -> CatalogChange | None:
    """The change from the live catalog to ``plan``, or None when a full build is due (the
    stored points carry no content hashes, an item would hold more personas than the live
    version was laid out for, or the change touches more than ``limit`` of the items: then a
    full build is cheaper, and an Edge overlay that large would slow every query).

    Reads the stored hashes of the planned points by id and the points per item, never a
    scan of the whole collection; only items whose point count changed are scrolled for the
    ids to delete.
    """
    base = live.base if live.base is not None else live.version
    touched: set[str] = set()
    planned_items: set[str] = set()
    counted: dict[str, dict[str, int]] = {}
    for kind, points in plan.items():
        name = collection_name(live.dataset, kind, base)
        if not backend.collection_exists(name):
            return None
        stored: dict[int, dict] = {}
        for start in range(0, len(points), _CHUNK):
            chunk = [p.id for p in points[start:start + _CHUNK]]
            stored.update(backend.retrieve_payloads(name, chunk))  # type: ignore[arg-type]
        if any(not payload.get("h") for payload in stored.values()):
            return None  # built before points carried their hashes
        sizes: dict[str, int] = {}
        for point in points:
            item = str(point.payload["item_id"])
            planned_items.add(item)
            sizes[item] = sizes.get(item, 0) + 1
            if (stored.get(point.id) or {}).get("h") != point_content(point):
                touched.add(item)
        held = backend.group_sizes(name)
        touched |= {item for item, n in held.items() if sizes.get(item, 0) != n}
        counted[kind] = held
    removed = touched - planned_items
    if len(touched) > limit * max(int(live.shape.get("items", 0)), len(planned_items), 1):
        return None
    if int(new.shape.get("max_group", 0)) > int(live.shape.get("max_group", 0) or 0):
        return None  # the bound of a top-k query was sized for the live version
    deletes = _stale_ids(backend, live, base, plan, counted, touched)
    return _change(plan, new, touched, removed, deletes, encode)


_CHUNK = 1024


def _stale_ids(backend: Backend, live: VersionManifest, base: int,
               plan: dict[str, list[PlannedPoint]], counted: dict[str, dict[str, int]],
               touched: set[str]) -> dict[str, list[int]]:
    """Stored ids the new plan lacks, among the touched items' points (one filtered scroll
    per kind over those items: a persona may be replaced by another of the same count)."""
    deletes: dict[str, list[int]] = {}
    for kind, points in plan.items():
        planned = {p.id for p in points}
        suspects = sorted(item for item, n in counted[kind].items() if item in touched and n)
        ids: list[int] = []
        if suspects:
            name = collection_name(live.dataset, kind, base)
            ids = [int(r.id) for r in backend.scroll(name, match=("item_id", suspects),
                                                     payload_keys=[])
                   if int(r.id) not in planned]
        deletes[kind] = sorted(ids)
    return deletes


def _change(plan: dict[str, list[PlannedPoint]], new: VersionManifest, touched: set[str],
            removed: set[str], deletes: dict[str, list[int]], encode: Encode) -> CatalogChange:
    points: dict[str, tuple[list[int], Any, list[dict[str, Any]]]] = {}
    derived: dict[str, tuple[list[int], list[dict[str, Any]]]] = {}
    by_id: dict[int, PlannedPoint] = {}
    for kind, planned in plan.items():
        chosen = [p for p in planned if str(p.payload["item_id"]) in touched]
        by_id.update({p.id: p for p in chosen})
        payloads = [{**p.payload, "h": point_content(p)} for p in chosen]
        if LAYOUTS[kind].from_text:
            points[kind] = ([p.id for p in chosen], encode(chosen), payloads)
        else:
            derived[kind] = ([p.id for p in chosen], payloads)

    def derive(backend: Backend, kind: str, source: str, ids: Sequence[int]) -> Any:
        sources = [by_id[pid].sources for pid in ids]
        wanted = list(dict.fromkeys(s for group in sources for s in group))
        vectors = backend.retrieve_vectors(source, wanted)
        return [np.stack([vectors[s] for s in group]) for group in sources]

    return CatalogChange(new, touched, removed, points, deletes, derive, derived)


def shape_of(plan: dict[str, list[PlannedPoint]]) -> dict[str, int]:
    """Personas, items, and the most personas one item has (what a top-k bound needs)."""
    sizes = Counter(str(p.payload["item_id"]) for p in plan.get("personas", []))
    return {"personas": len(plan.get("personas", [])), "items": len(sizes),
            "max_group": max(sizes.values(), default=0)}
