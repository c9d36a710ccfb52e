"""Catalog changes applied as deltas, and the views readers query through.

A changed catalog with the same encoder and layout does not need a full rebuild: only the
items whose points changed are written. How depends on the engine, so each backend hands out
its strategy (:meth:`~p4r.store.base.Backend.catalog_delta`):

* **in place** (a server): the live collections take the new and changed points and lose the
  removed ones; the manifest is marked ``delta_pending`` while that happens (readers then do
  not count-check it), then records the new digest and counts;
* **overlay** (Edge, whose published shards are never written): a small new version holds
  every point of the touched items and lists them as ``masked``; readers take those items
  from the overlay and every other item from its ``base`` version. Each delta rebuilds the
  overlay against the same base, so overlays never stack; the next full build merges them.

Either way the answers equal a full rebuild's: the same vectors (one encoder), exact search.
:class:`View` is what a reader queries: one collection, or an overlay over a base.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from p4r.store import catalog, history
from p4r.store.base import Backend, GroupAnswer
from p4r.store.history import SwapRecord
from p4r.store.lifecycle import create_version, finish_version, publish_version
from p4r.store.manifest import VersionManifest
from p4r.store.naming import collection_name

# kind → (ids, vectors, payloads): the points a delta writes, in the new plan's terms.
Points = dict[str, tuple[list[int], Any, list[dict[str, Any]]]]
# Makes the vectors of derived kinds (MaxSim items) once the others are written:
# (backend, kind, collection its sources are in, point ids) → vectors.
Derive = Callable[[Backend, str, str, Sequence[int]], Any]


@dataclass
class CatalogChange:
    """What changed between the live catalog and the new plan.

    Attributes:
        manifest: the new catalog's manifest (digest, counts and shape of the whole plan).
        touched: items with any point added, changed or removed (in any kind).
        removed: touched items the new plan no longer has.
        points: every point of the touched items in the new plan, per kind (vectors
            included except for derived kinds, which ``derive`` makes).
        deletes: point ids the live catalog holds and the new plan lacks, per kind.
        derive: makes derived vectors (MaxSim items from the persona points just written).
    """

    manifest: VersionManifest
    touched: set[str]
    removed: set[str]
    points: Points
    deletes: dict[str, list[int]]
    derive: Derive
    derived: dict[str, tuple[list[int], list[dict[str, Any]]]] = field(default_factory=dict)


class DeltaStrategy(Protocol):
    """How an engine applies a catalog change and publishes it."""

    def apply(self, backend: Backend, live: VersionManifest,
              change: CatalogChange) -> VersionManifest:
        """Write the change, publish it, and return the manifest readers now see."""
        ...


class InPlaceDelta:
    """A server's strategy: write the live collections, record the delta."""

    def apply(self, backend: Backend, live: VersionManifest,
              change: CatalogChange) -> VersionManifest:
        dataset, version = live.dataset, live.version
        names = {kind: collection_name(dataset, kind, version) for kind in live.counts}
        pending = replace(live, delta_pending=True)
        _write_manifest(backend, names, pending)
        for kind, (ids, vectors, payloads) in change.points.items():
            if ids and kind in names:
                backend.upsert(names[kind], ids, vectors, payloads)
        for kind, (ids, payloads) in change.derived.items():
            if ids and kind in names:
                source = names[_SOURCE[kind]]
                backend.upsert(names[kind], ids, change.derive(backend, kind, source, ids),
                               payloads)
        for kind, ids in change.deletes.items():
            if ids and kind in names:
                backend.delete_ids(names[kind], ids)
        done = replace(change.manifest, version=version, state="complete",
                       created_at=live.created_at, completed_at=time.time(),
                       delta_seq=live.delta_seq + 1, delta_pending=False)
        _write_manifest(backend, names, done)
        entry = history.begin_swap(backend, SwapRecord(
            dataset=dataset, from_version=version, to_version=version, reason="delta",
            encoder=dict(done.encoder) if done.encoder else None, counts=dict(done.counts)))
        history.finish_swap(backend, entry)
        return done


class OverlayDelta:
    """Edge's strategy: a small overlay version over the live version's base."""

    def apply(self, backend: Backend, live: VersionManifest,
              change: CatalogChange) -> VersionManifest:
        dataset = live.dataset
        base = live.base if live.base is not None else live.version
        version = max([*catalog.versions(backend, dataset), 0]) + 1
        counts = {kind: len(change.points.get(kind, ((), None, ()))[0])
                  + len(change.derived.get(kind, ((), ()))[0]) for kind in live.counts}
        overlay = replace(change.manifest, version=version, state="building", base=base,
                          masked=tuple(sorted(change.touched)), counts=counts,
                          delta_seq=live.delta_seq + 1, created_at=time.time(),
                          completed_at=None, delta_pending=False)
        create_version(backend, overlay, live.counts, change.manifest.fingerprint.dim  # type: ignore[union-attr]
                       if change.manifest.fingerprint else 1,
                       max_group_size=_max_group(change))
        names = {kind: collection_name(dataset, kind, version) for kind in live.counts}
        for kind, (ids, vectors, payloads) in change.points.items():
            if ids and kind in names:
                backend.upsert(names[kind], ids, vectors, payloads)
        for kind, (ids, payloads) in change.derived.items():
            if ids and kind in names:
                backend.upsert(names[kind], ids,
                               change.derive(backend, kind, names[_SOURCE[kind]], ids), payloads)
        finished = finish_version(backend, overlay)
        publish_version(backend, finished)
        return finished


_SOURCE = {"items": "personas"}


def _max_group(change: CatalogChange) -> int:
    sizes: dict[str, int] = {}
    for payload in change.points.get("personas", ([], None, []))[2]:
        item = str(payload.get("item_id"))
        sizes[item] = sizes.get(item, 0) + 1
    return max(sizes.values(), default=1)


def _write_manifest(backend: Backend, names: Mapping[str, str],
                    manifest: VersionManifest) -> None:
    for kind, name in names.items():
        backend.update_metadata(name, manifest.collection_metadata(kind))


# -- what readers query ------------------------------------------------------------------------
@dataclass(frozen=True)
class View:
    """One kind of the served catalog: a collection, or an overlay over a base collection.

    Items in ``masked`` come only from ``primary`` (the overlay); every other item from
    ``base`` (where present) or ``primary``.
    """

    primary: str
    base: str | None = None
    masked: frozenset[str] = frozenset()

    def base_groups(self, groups: Sequence[Sequence[str]]) -> list[list[str]]:
        """Each request's candidates the base may answer for."""
        return [[g for g in values if g not in self.masked] for values in groups]


def merge_answers(primary: Sequence[GroupAnswer], base: Sequence[GroupAnswer],
                  limits: Sequence[int | None] | None) -> list[GroupAnswer]:
    """Overlay and base answers of the same requests as one answer each (score order, ties
    by group, cut to the request's limit)."""
    out = []
    for index, (a, b) in enumerate(zip(primary, base, strict=True)):
        hits = sorted([*a.hits, *b.hits], key=lambda h: (-h.score, h.group))
        limit = limits[index] if limits else None
        out.append(GroupAnswer(hits[:limit] if limit is not None else hits,
                               a.present | b.present))
    return out


def view_of(backend: Backend, dataset: str, kind: str, collection: str | None,
            manifest: VersionManifest) -> View | None:
    """The view of one kind of a served version (its overlay's base resolved)."""
    if collection is None:
        return None
    if manifest.base is None:
        return View(collection)
    base = collection_name(dataset, kind, manifest.base)
    return View(collection, base if backend.collection_exists(base) else None,
                frozenset(manifest.masked))
