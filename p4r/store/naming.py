"""Collection and alias names, and deterministic integer point ids."""

from __future__ import annotations

import hashlib
import re
import uuid

# Every kind a catalog version can hold; aliases of all of them move together. ``items`` is
# the per-item multivector collection (MaxSim over an item's personas), built only on request
# (P4R_INDEX__MAXSIM): the bounded persona query answers top k faster without a second copy of
# every persona vector. Versions built before the user state moved out of the catalog also
# hold interactions and profiles (migration m004 moves them out).
CATALOG_KINDS = ("personas", "summaries", "items")
USER_KINDS = ("interactions", "profiles")  # user state: keyed by encoder, not versioned
KINDS = ("personas", "summaries", "interactions", "profiles", "items")  # names to parse
OPTIONAL_KINDS = ("items",)
DEFAULT_KINDS = ("personas", "summaries")  # what a catalog version holds by default
# Kinds a version must have.
CORE_KINDS = ("personas", "summaries")
RECORD_COLLECTION = "p4r_migrations"  # the server keeps swap history and migrations here
ID_SCHEME = 2  # 1: uuid5 over "/"-joined parts; 2: 63-bit blake2b over length-prefixed parts
# Fixed namespace of id scheme 1; kept to read and migrate stores built with it.
P4R_NAMESPACE = uuid.UUID("6f2d7c1e-4b7a-5d2e-9c1a-2b9e8f4d0a11")
_MASK63 = (1 << 63) - 1
_VERSIONED = re.compile(r"^p4r_(?P<dataset>.+)_(?P<kind>" + "|".join(KINDS) + r")_v(?P<v>\d+)$")


def alias_name(dataset: str, kind: str = "personas") -> str:
    """Stable name queries use: ``p4r_<dataset>_<kind>``."""
    return f"p4r_{dataset}_{kind}"


def collection_name(dataset: str, kind: str, version: int) -> str:
    """Versioned physical collection: ``p4r_<dataset>_<kind>_v<N>``."""
    return f"p4r_{dataset}_{kind}_v{version}"


def user_collection(dataset: str, kind: str, fingerprint_key: str) -> str:
    """User-state collection of one encoder: ``p4r_<dataset>_<kind>_u<12 hex>`` (not a
    version: written in place, never aliased)."""
    short = hashlib.sha256(fingerprint_key.encode("utf-8")).hexdigest()[:12]
    return f"p4r_{dataset}_{kind}_u{short}"


def parse_collection_name(name: str) -> tuple[str, str, int] | None:
    """``(dataset, kind, version)`` of a versioned name, else None."""
    match = _VERSIONED.match(name)
    if not match:
        return None
    return match["dataset"], match["kind"], int(match["v"])


def point_key(*parts: object) -> bytes:
    """Unambiguous encoding of id parts: each part is length-prefixed, so no separator inside
    a part (``x/P1`` + ``P2`` against ``x`` + ``P1/P2``) can make two keys equal."""
    out = bytearray(b"p4r-id-2")
    for part in parts:
        data = str(part).encode("utf-8")
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def point_id(*parts: object) -> int:
    """63-bit integer id of ``parts``, e.g. ``point_id(dataset, item_id, persona_id)``.

    Integers are the engine's fastest ids (no UUID objects on the hot path). Distinct keys can
    collide only by hash accident (about 1e-8 at 1M points); builds check and fail loudly.
    """
    digest = hashlib.blake2b(point_key(*parts), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _MASK63


# The key of each kind's points, in one place: the indexer, the migration, the reranker and the
# benchmark all derive ids from these, so a point is always found under the id it was stored by.
def persona_key(dataset: str, item_id: str, persona_id: str) -> tuple[str, ...]:
    """Key of a persona point."""
    return (dataset, item_id, persona_id)


def summary_key(dataset: str, item_id: str) -> tuple[str, ...]:
    """Key of an item-summary point."""
    return (dataset, item_id)


def interaction_key(dataset: str, user_id: str, item_id: str, ts: float) -> tuple[str, ...]:
    """Key of an interaction point (timestamps as :func:`format_ts` writes them)."""
    return (dataset, user_id, item_id, format_ts(ts))


def profile_key(dataset: str, user_id: str) -> tuple[str, ...]:
    """Key of a user's profile point."""
    return (dataset, "user", user_id)


def item_key(dataset: str, item_id: str) -> tuple[str, ...]:
    """Key of an item's MaxSim point."""
    return (dataset, "item", item_id)


def legacy_point_id(*parts: object) -> str:
    """Id scheme 1 (uuid5 over ``"/"``-joined parts); read only by the id migration."""
    return str(uuid.uuid5(P4R_NAMESPACE, "/".join(str(p) for p in parts)))


def format_ts(ts: float) -> str:
    """Timestamps in ids: integral seconds without a trailing ``.0``."""
    return str(int(ts)) if float(ts).is_integer() else repr(float(ts))
