"""Copy a stored version into a new one under the current id scheme (migration m003).

Everything comes from the store: vectors and payloads of the personas, summaries and
interactions collections; profiles and the per-item MaxSim collection are derived from them
as a fresh build would. The new version is published like any other (swap recorded).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np

from p4r.collections import catalog
from p4r.collections.base import Backend, CollectionSpec
from p4r.collections.naming import (
    DEFAULT_KINDS,
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
from p4r.encoder.profile import user_vector

_BATCH = 512


def rebuild_with_integer_ids(backend: Backend, dataset: str) -> int | None:
    """New version of ``dataset`` with integer ids if its live one predates them; its number."""
    from p4r.indexer.pipeline import (
        GROUP_BY,
        KEYWORD_INDEXES,
        _finish_version,
        publish_version,
    )

    live = catalog.live_version(backend, dataset)
    if live is None:
        return None
    meta = catalog.version_metadata(backend, dataset, live)
    if int(meta.get("id_scheme") or 1) >= ID_SCHEME:
        return None
    kinds = catalog.versions(backend, dataset)[live]
    points = {kind: _read(backend, kinds[kind]) for kind in ("personas", "summaries",
                                                            "interactions") if kind in kinds}
    gamma, last_n = 0.65, 10
    new = _rekey(dataset, points, gamma, last_n)
    version = max(catalog.versions(backend, dataset)) + 1
    counts = {kind: len(new[kind]) for kind in DEFAULT_KINDS}  # MaxSim only on request
    metadata = {**{k: v for k, v in meta.items() if k not in ("kind", "dim", "keyword_indexes",
                                                               "multivector")},
                "version": version, "state": "building", "counts": counts, "id_scheme": ID_SCHEME,
                "digest": f"migrated-from-v{live}:{meta.get('digest')}",
                "profile": {"gamma": gamma, "last_n": last_n},
                "max_group_size": max((len(m) for _, m, _ in new["items"]), default=0),
                "created_at": time.time(), "migrated_from": live}
    dim = backend.vector_size(kinds["personas"])
    for kind in DEFAULT_KINDS:
        name = collection_name(dataset, kind, version)
        backend.create_collection(CollectionSpec(
            name=name, dim=dim, keyword_indexes=KEYWORD_INDEXES[kind],
            metadata={**metadata, "kind": kind}, multivector=kind == "items",
            group_by=GROUP_BY.get(kind, ())))
        rows = new[kind]
        for start in range(0, len(rows), _BATCH):
            chunk = rows[start:start + _BATCH]
            vectors: Any = [v for _, v, _ in chunk] if kind == "items" else \
                np.stack([v for _, v, _ in chunk])
            backend.upsert(name, [pid for pid, _, _ in chunk], vectors, [p for _, _, p in chunk])
    _finish_version(backend, dataset, version, counts)
    publish_version(backend, dataset, version, meta.get("encoder") or {}, counts)
    return version


def _read(backend: Backend, name: str) -> list[tuple[np.ndarray, dict[str, Any]]]:
    return [(r.vector, r.payload or {}) for r in backend.scroll(name, with_vectors=True)
            if r.vector is not None]


def _rekey(
    dataset: str, points: dict[str, list[tuple[np.ndarray, dict[str, Any]]]], gamma: float,
    last_n: int,
) -> dict[str, list[tuple[int, Any, dict[str, Any]]]]:
    """Every kind's (new id, vector, payload) rows; profiles and items derived."""
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
        recent = rows[-last_n:]
        out["profiles"].append((point_id(*profile_key(dataset, user)),
                                user_vector(np.stack([r[2] for r in rows]), gamma, last_n),
                                {"user_id": user, "count": len(rows),
                                 "recent": [{"item_id": i, "ts": t} for t, i, _ in recent]}))
    return out
