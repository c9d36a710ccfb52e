"""m003: move every dataset whose live version uses uuid point ids (id scheme 1) to a new
version with 63-bit integer ids and profile points, copied from the stored vectors.

No dataset files or encoder are needed: vectors and payloads of the personas, summaries and
interactions collections are re-keyed, profiles are derived from the interactions as a build
of that time derived them, and the new version is published like any other (swap recorded).
The old version stays until pruned. Frozen: it uses only the store and its own constants.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

import numpy as np

from p4r.encoder.profile import user_vector
from p4r.settings import ProfileParams
from p4r.store import catalog, history
from p4r.store.base import Backend
from p4r.store.lifecycle import create_version, finish_version, publish_version
from p4r.store.naming import (
    ID_SCHEME,
    KINDS,
    collection_name,
    interaction_key,
    item_key,
    persona_key,
    point_id,
    profile_key,
    summary_key,
)

_BATCH = 512
# Profiles of uuid-id versions (which recorded none) are built the way p4r built them when this
# migration shipped; a version that recorded its own γ and n keeps them.
_PROFILE_WHEN_SHIPPED = ProfileParams(gamma=0.65, last_n=10)
# What a version held when this migration shipped (user state moved out later, in m004).
_KINDS_WHEN_SHIPPED = ("personas", "summaries", "interactions", "profiles")


def run(backend: Backend) -> None:
    """Re-key every indexed dataset that still serves uuid ids."""
    for dataset in history.indexed_datasets(backend):
        rebuild_with_integer_ids(backend, dataset)


def rebuild_with_integer_ids(backend: Backend, dataset: str) -> int | None:
    """New version of ``dataset`` with integer ids if its live one predates them; its number."""
    live = catalog.live_version(backend, dataset)
    if live is None:
        return None
    old = catalog.read_manifest(backend, dataset, live)
    if old.id_scheme >= ID_SCHEME:
        return None
    kinds = catalog.versions(backend, dataset)[live]
    points = {kind: _read(backend, kinds[kind]) for kind in ("personas", "summaries",
                                                            "interactions") if kind in kinds}
    profile = old.profile or _PROFILE_WHEN_SHIPPED
    new = _rekey(dataset, points, profile)
    version = max(catalog.versions(backend, dataset)) + 1
    manifest = replace(
        old, version=version, state="building", id_scheme=ID_SCHEME, profile=profile,
        counts={kind: len(new[kind]) for kind in _KINDS_WHEN_SHIPPED},  # MaxSim only on request
        digest=f"migrated-from-v{live}:{old.digest}", created_at=time.time(),
        completed_at=None, migrated_from=live)
    create_version(backend, manifest, _KINDS_WHEN_SHIPPED, backend.vector_size(kinds["personas"]),
                   max_group_size=max((len(m) for _, m, _ in new["items"]), default=0))
    for kind in _KINDS_WHEN_SHIPPED:
        name = collection_name(dataset, kind, version)
        rows = new[kind]
        for start in range(0, len(rows), _BATCH):
            chunk = rows[start:start + _BATCH]
            backend.upsert(name, [pid for pid, _, _ in chunk], np.stack([v for _, v, _ in chunk]),
                           [p for _, _, p in chunk])
    publish_version(backend, finish_version(backend, manifest))
    return version


def _read(backend: Backend, name: str) -> list[tuple[np.ndarray, dict[str, Any]]]:
    return [(r.vector, r.payload or {}) for r in backend.scroll(name, with_vectors=True)
            if r.vector is not None]


def _rekey(
    dataset: str, points: dict[str, list[tuple[np.ndarray, dict[str, Any]]]],
    profile: ProfileParams,
) -> dict[str, list[tuple[int, Any, dict[str, Any]]]]:
    """Every kind's (new id, vector, payload) rows; profiles (and item groups) derived."""
    out: dict[str, list[tuple[int, Any, dict[str, Any]]]] = {k: [] for k in KINDS}
    by_item: dict[str, list[np.ndarray]] = defaultdict(list)
    for vector, p in points.get("personas", []):
        key = persona_key(dataset, p["item_id"], p["persona_id"])
        out["personas"].append((point_id(*key), vector, p))
        by_item[str(p["item_id"])].append(vector)
    for item, vectors in by_item.items():
        out["items"].append((point_id(*item_key(dataset, item)), np.stack(vectors),
                             {"item_id": item}))
    for vector, p in points.get("summaries", []):
        out["summaries"].append((point_id(*summary_key(dataset, p["item_id"])), vector, p))
    by_user: dict[str, list[tuple[float, str, np.ndarray]]] = defaultdict(list)
    for vector, p in points.get("interactions", []):
        ts = float(p["ts"])
        out["interactions"].append(
            (point_id(*interaction_key(dataset, p["user_id"], p["item_id"], ts)), vector, p))
        by_user[str(p["user_id"])].append((ts, str(p["item_id"]), vector))
    for user, rows in by_user.items():
        rows.sort(key=lambda r: (r[0], r[1]))
        recent = rows[-profile.last_n:]
        out["profiles"].append((point_id(*profile_key(dataset, user)),
                                user_vector(np.stack([r[2] for r in rows]), profile.gamma,
                                            profile.last_n),
                                {"user_id": user, "count": len(rows),
                                 "recent": [{"item_id": i, "ts": t} for t, i, _ in recent]}))
    return out

