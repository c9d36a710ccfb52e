"""Collection and alias names, and deterministic point ids."""

from __future__ import annotations

import re
import uuid

KINDS = ("personas", "summaries", "interactions")
# Fixed namespace: ids must stay stable across machines and releases.
P4R_NAMESPACE = uuid.UUID("6f2d7c1e-4b7a-5d2e-9c1a-2b9e8f4d0a11")
_VERSIONED = re.compile(
    r"^p4r_(?P<dataset>.+)_(?P<kind>personas|summaries|interactions)_v(?P<v>\d+)$"
)


def alias_name(dataset: str, kind: str = "personas") -> str:
    """Stable name queries use: ``p4r_<dataset>_<kind>``."""
    return f"p4r_{dataset}_{kind}"


def collection_name(dataset: str, kind: str, version: int) -> str:
    """Versioned physical collection: ``p4r_<dataset>_<kind>_v<N>``."""
    return f"p4r_{dataset}_{kind}_v{version}"


def parse_collection_name(name: str) -> tuple[str, str, int] | None:
    """``(dataset, kind, version)`` of a versioned name, else None."""
    match = _VERSIONED.match(name)
    if not match:
        return None
    return match["dataset"], match["kind"], int(match["v"])


def point_id(*parts: object) -> str:
    """uuid5 over ``"/"``-joined parts, e.g. ``point_id(dataset, item_id, persona_id)``."""
    return str(uuid.uuid5(P4R_NAMESPACE, "/".join(str(p) for p in parts)))


def format_ts(ts: float) -> str:
    """Timestamps in ids: integral seconds without a trailing ``.0``."""
    return str(int(ts)) if float(ts).is_integer() else repr(float(ts))
