"""m004: move interactions and profiles out of catalog versions into the user state.

Versions built before this migration hold ``interactions`` and ``profiles`` collections. For
each encoder fingerprint, the newest version's interactions are copied (vectors included: no
encoder is needed) into the user state of that encoder; then every version's interaction and
profile collections and their aliases are removed, so no kept version holds user data any
more (forgetting a user reaches everything). The next ``p4r index upsert`` re-reads the
interactions' texts from the dataset files. Frozen: it uses only the store.
"""

from __future__ import annotations

import numpy as np

from p4r.settings import ProfileParams
from p4r.store import catalog, history
from p4r.store.base import Backend
from p4r.store.naming import alias_name, parse_collection_name
from p4r.store.users import InteractionRecord, UserStore

_USER_KINDS_WHEN_SHIPPED = ("interactions", "profiles")
_PROFILE_WHEN_SHIPPED = ProfileParams(gamma=0.65, last_n=10)
_BATCH = 512


def run(backend: Backend) -> None:
    """Move every dataset's version-level user data into its user state."""
    datasets = set(history.indexed_datasets(backend))
    datasets |= {parsed[0] for name in backend.list_collections()
                 if (parsed := parse_collection_name(name)) is not None
                 and parsed[1] in _USER_KINDS_WHEN_SHIPPED}
    for dataset in sorted(datasets):
        move_user_state(backend, dataset)


def move_user_state(backend: Backend, dataset: str) -> int:
    """Copy each encoder's newest interactions into its user state, then drop the version-level
    collections; returns how many interactions were copied."""
    versions = catalog.versions(backend, dataset)
    copied = 0
    done: set[str] = set()
    for number in sorted(versions, reverse=True):
        name = versions[number].get("interactions")
        if name is None:
            continue
        manifest = catalog.read_manifest(backend, dataset, number)
        fingerprint = manifest.fingerprint
        if fingerprint is None or fingerprint.weights_sha256 + str(fingerprint.dim) in done:
            continue
        done.add(fingerprint.weights_sha256 + str(fingerprint.dim))
        store = backend.user_store(dataset, fingerprint,
                                   manifest.profile or _PROFILE_WHEN_SHIPPED)
        batch: list[tuple[InteractionRecord, np.ndarray]] = []
        for point in backend.scroll(name, with_vectors=True):
            payload = point.payload or {}
            if point.vector is None or "user_id" not in payload:
                continue
            rating = payload.get("rating")
            batch.append((InteractionRecord(
                user_id=str(payload["user_id"]), item_id=str(payload["item_id"]),
                timestamp=float(payload["ts"]),
                rating=float(rating) if rating is not None else None, origin="file"),
                point.vector))
            if len(batch) >= _BATCH:
                copied += _write(store, batch)
                batch = []
        copied += _write(store, batch)
    aliases = backend.get_aliases()
    backend.set_aliases({alias_name(dataset, kind): None for kind in _USER_KINDS_WHEN_SHIPPED
                         if alias_name(dataset, kind) in aliases})
    for kinds in versions.values():
        for kind in _USER_KINDS_WHEN_SHIPPED:
            if kind in kinds:
                backend.drop_collection(kinds[kind])
    return copied


def _write(store: UserStore, batch: list[tuple[InteractionRecord, np.ndarray]]) -> int:
    if not batch:
        return 0
    return int(sum(store.record([r for r, _ in batch], np.stack([v for _, v in batch]))))
