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
from p4r.store.deltas import CatalogChange, read_points_contents
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
    full build is cheaper, and an Edge overlay that large would slow every query)."""
    base = live.base if live.base is not None else live.version
    stored: dict[str, dict[int, str]] = {}
    for kind in plan:
        name = collection_name(live.dataset, kind, base)
        if not backend.collection_exists(name):
            return None
        stored[kind] = read_points_contents(backend, name)
        if any(not h for h in stored[kind].values()):
            return None  # built before points carried their hashes
    touched: set[str] = set()
    planned_items: set[str] = set()
    for kind, points in plan.items():
        old = stored[kind]
        for point in points:
            item = str(point.payload["item_id"])
            planned_items.add(item)
            if old.get(point.id) != point_content(point):
                touched.add(item)
    deletes: dict[str, list[int]] = {}
    removed_ids = {kind: set(stored[kind]) - {p.id for p in plan[kind]} for kind in plan}
    old_items = _items_of(backend, live.dataset, base, removed_ids)
    for kind, ids in removed_ids.items():
        deletes[kind] = sorted(ids)
        touched |= {old_items[pid] for pid in ids if pid in old_items}
    removed = touched - planned_items
    if len(touched) > limit * max(int(live.shape.get("items", 0)), len(planned_items), 1):
        return None
    if int(new.shape.get("max_group", 0)) > int(live.shape.get("max_group", 0) or 0):
        return None  # the bound of a top-k query was sized for the live version
    return _change(plan, new, touched, removed, deletes, encode)


def _items_of(backend: Backend, dataset: str, version: int,
              ids: dict[str, set[int]]) -> dict[int, str]:
    """Item of each removed point (read from the stored payloads)."""
    out: dict[int, str] = {}
    for kind, wanted in ids.items():
        if wanted:
            name = collection_name(dataset, kind, version)
            out.update({int(pid): str(p.get("item_id"))
                        for pid, p in backend.retrieve_payloads(name, sorted(wanted)).items()})
    return out


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
