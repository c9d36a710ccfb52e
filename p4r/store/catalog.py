"""What a backend holds for a dataset: versions, their state, and which one is live."""

from __future__ import annotations

from collections import defaultdict

from p4r.errors import NotIndexedError
from p4r.store.base import Backend
from p4r.store.manifest import VersionManifest
from p4r.store.naming import KINDS, alias_name, collection_name, parse_collection_name


def versions(backend: Backend, dataset: str) -> dict[int, dict[str, str]]:
    """Version number → {kind: collection name} for every stored version of ``dataset``."""
    found: dict[int, dict[str, str]] = defaultdict(dict)
    for name in backend.list_collections():
        parsed = parse_collection_name(name)
        if parsed and parsed[0] == dataset:
            found[parsed[2]][parsed[1]] = name
    return dict(sorted(found.items()))


def live_version(backend: Backend, dataset: str) -> int | None:
    """Version the personas alias points at, or None before the first complete build."""
    target = backend.get_aliases().get(alias_name(dataset, "personas"))
    parsed = parse_collection_name(target) if target else None
    return parsed[2] if parsed else None


def live_collection(backend: Backend, dataset: str, kind: str = "personas") -> str:
    """Collection behind ``p4r_<dataset>_<kind>``; NotFoundError if the dataset is not indexed."""
    target = backend.get_aliases().get(alias_name(dataset, kind))
    if target is None:
        raise NotIndexedError(
            f"dataset {dataset!r} is not indexed in {backend.describe()} "
            f"(run: p4r index upsert --dataset {dataset})"
        )
    return target


def read_manifest(backend: Backend, dataset: str, version: int) -> VersionManifest:
    """The manifest of a version (stored on its personas collection)."""
    meta = backend.get_metadata(collection_name(dataset, "personas", version))
    return VersionManifest.from_metadata(meta, dataset=dataset, version=version)


def swap_aliases(backend: Backend, dataset: str, version: int) -> None:
    """Point every alias at ``version`` in one atomic alias update; kinds the version lacks
    (an older layout) lose their alias, so no alias is left on another version."""
    present = versions(backend, dataset).get(version, {})
    backend.set_aliases({alias_name(dataset, k): present.get(k) for k in KINDS})
