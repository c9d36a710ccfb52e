"""What each kind of collection holds and how it is laid out: indexes, grouping, vectors.

One table, read by the indexer (what to create), the lifecycle (what to verify) and the
migrations (what to copy), so a kind's layout is never spelled out twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from p4r.store.base import CollectionSpec
from p4r.store.manifest import VersionManifest
from p4r.store.naming import collection_name


@dataclass(frozen=True)
class KindLayout:
    """How one kind of a version is stored.

    Attributes:
        keyword_indexes: payload fields indexed before any point is inserted (the ones
            queries filter on).
        group_by: payload keys candidates are grouped by at query time.
        multivector: each point is a matrix scored with MaxSim (the per-item collection).
        from_text: vectors are embeddings of a text (else derived from other points).
    """

    keyword_indexes: tuple[str, ...]
    group_by: tuple[str, ...] = ()
    multivector: bool = False
    from_text: bool = True


LAYOUTS: dict[str, KindLayout] = {
    "personas": KindLayout(("item_id",), group_by=("item_id",)),
    "summaries": KindLayout(("item_id",), group_by=("item_id",)),
    "interactions": KindLayout(("user_id", "item_id")),
    "profiles": KindLayout(("user_id",), from_text=False),
    "items": KindLayout(("item_id",), group_by=("item_id",), multivector=True, from_text=False),
}


def collection_spec(manifest: VersionManifest, kind: str, dim: int, *,
                    max_group_size: int | None = None) -> CollectionSpec:
    """The spec of the version's ``kind`` collection, carrying the manifest."""
    layout = LAYOUTS[kind]
    return CollectionSpec(
        name=collection_name(manifest.dataset, kind, manifest.version), dim=dim,
        keyword_indexes=layout.keyword_indexes, metadata=manifest.collection_metadata(kind),
        multivector=layout.multivector, group_by=layout.group_by,
        datatype=manifest.vector_datatype, kind=kind,
        max_group_size=1 if layout.multivector else max_group_size if layout.group_by else None)
