"""The store's own audit log: every alias swap of every dataset, and the schema migrations
applied to the store.

The record is kept by the backend (:meth:`~p4r.store.base.Backend.record_entries` /
``record_put``): a JSON file replaced atomically on Edge (several processes read it, the writer
lock serialises writers), a small collection ``p4r_migrations`` on a server. Each entry is a
payload:

- ``kind="schema"``: a schema migration that was applied, by ``name``;
- ``kind="swap"``: one move of a dataset's aliases from ``from_version`` to ``to_version``.

Crash safety of a swap: the entry is written ``pending`` *before* the aliases move, and marked
``applied`` after. :func:`reconcile` (run before every upsert and by ``p4r index migrate``)
settles what a crash left behind, using the aliases as the truth: a pending swap whose target
is live (or was the source of a later swap) is marked ``applied``; one whose aliases never
moved is marked ``abandoned``. Alias moves with no entry at all (a store indexed before
migrations existed, or a hand-edited alias) get an ``unrecorded`` entry. One writer per
dataset at a time is assumed, as for upserts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from p4r.errors import NotFoundError
from p4r.store import catalog
from p4r.store.base import Backend
from p4r.store.naming import RECORD_COLLECTION, alias_name

__all__ = ["RECORD_COLLECTION", "SwapRecord"]
SwapState = Literal["pending", "applied", "abandoned"]


@dataclass
class SwapRecord:
    """One alias move of a dataset: from which version to which, with what, and why.

    ``reason`` is ``created`` (first live version), ``reindex`` (encoder changed), ``update``
    (same encoder, changed data), ``dropped`` (aliases removed), or ``unrecorded`` (found by
    :func:`reconcile` without an entry). ``time`` is when the swap started (epoch seconds).
    """

    dataset: str
    from_version: int | None
    to_version: int | None
    reason: str
    encoder: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    state: SwapState = "pending"
    seq: int = 0
    time: float = 0.0
    applied_at: float | None = None
    repaired: bool = False
    id: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (also the stored payload, plus ``kind``)."""
        return asdict(self)

    @classmethod
    def from_payload(cls, point_id: str, payload: dict[str, Any]) -> SwapRecord:
        """Rebuild a record from its stored payload."""
        names = set(cls.__dataclass_fields__)
        data = {k: v for k, v in payload.items() if k in names}
        data["id"] = point_id
        return cls(**data)


def record_exists(backend: Backend) -> bool:
    """Whether the record exists (it does once migration m001 ran)."""
    return backend.record_exists()


def ensure_record_collection(backend: Backend) -> bool:
    """Create the record if missing (never recreate: that would erase history).

    Returns:
        True when it was created now.
    """
    return backend.ensure_record()


def _write(backend: Backend, point_id: str, payload: dict[str, Any]) -> None:
    """Store (or overwrite) one entry."""
    backend.record_put(point_id, payload)


def _entries(backend: Backend, match: tuple[str, str]) -> Iterable[tuple[str, dict[str, Any]]]:
    """(id, payload) of every entry with ``payload[key] == value``; none before m001."""
    if not record_exists(backend):
        return []
    return backend.record_entries(match)


# -- schema migrations ---------------------------------------------------------------------------
def applied_schema(backend: Backend) -> dict[str, float]:
    """Name → time of every schema migration recorded as applied."""
    return {str(p["name"]): float(p.get("applied_at", 0.0))
            for _, p in _entries(backend, ("kind", "schema"))}


def record_schema(backend: Backend, name: str) -> None:
    """Record that schema migration ``name`` ran (deterministic id: recording twice is a no-op)."""
    ensure_record_collection(backend)
    pid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"p4r/migration/{name}"))
    _write(backend, pid, {"kind": "schema", "name": name, "applied_at": time.time()})


# -- alias swaps ---------------------------------------------------------------------------------
def swap_history(backend: Backend, dataset: str) -> list[SwapRecord]:
    """Every swap entry of ``dataset``, oldest first (read-only; empty before m001)."""
    records = [SwapRecord.from_payload(pid, p) for pid, p in _entries(backend, ("dataset", dataset))
               if p.get("kind") == "swap"]
    return sorted(records, key=lambda r: (r.seq, r.time))


def _save(backend: Backend, record: SwapRecord) -> None:
    _write(backend, record.id, {"kind": "swap", **{k: v for k, v in record.as_dict().items()
                                                   if k != "id"}})


def begin_swap(backend: Backend, record: SwapRecord) -> SwapRecord:
    """Write ``record`` as pending before the aliases move; returns it with id, seq and time."""
    ensure_record_collection(backend)
    history = swap_history(backend, record.dataset)
    record.id = record.id or str(uuid.uuid4())
    record.seq = max((r.seq for r in history), default=0) + 1
    record.time = record.time or time.time()
    record.state = "pending"
    _save(backend, record)
    return record


def finish_swap(backend: Backend, record: SwapRecord, *, repaired: bool = False) -> SwapRecord:
    """Mark a pending swap applied, once the aliases have moved."""
    record.state = "applied"
    record.applied_at = time.time()
    record.repaired = repaired
    _save(backend, record)
    return record


def _version_facts(backend: Backend, dataset: str, version: int | None) -> dict[str, Any]:
    """Encoder and counts stored with a version's personas collection ({} if gone)."""
    if version is None:
        return {}
    try:
        manifest = catalog.read_manifest(backend, dataset, version)
    except NotFoundError:
        return {}
    return {"encoder": dict(manifest.encoder) if manifest.encoder else None,
            "counts": dict(manifest.counts)}


def reconcile(backend: Backend, dataset: str) -> list[SwapRecord]:
    """Settle what a crash left in the record of ``dataset``; returns the entries it changed.

    Pending swaps become ``applied`` when their target is live or a later swap left from it,
    else ``abandoned``. If the live version still differs from the last applied swap's target,
    an ``unrecorded`` swap to it is appended.
    """
    if not record_exists(backend):
        return []
    live = catalog.live_version(backend, dataset)
    history = swap_history(backend, dataset)
    changed: list[SwapRecord] = []
    for record in history:
        if record.state != "pending":
            continue
        later_from = {r.from_version for r in history if r.seq > record.seq}
        if record.to_version == live or record.to_version in later_from:
            finish_swap(backend, record, repaired=True)
        else:
            record.state = "abandoned"
            _save(backend, record)
        changed.append(record)
    applied = [r for r in history if r.state == "applied"]
    last = applied[-1].to_version if applied else None
    if live != last:
        facts = _version_facts(backend, dataset, live)
        record = begin_swap(backend, SwapRecord(
            dataset=dataset, from_version=last, to_version=live, reason="unrecorded",
            encoder=facts.get("encoder"), counts=facts.get("counts", {})))
        changed.append(finish_swap(backend, record, repaired=True))
    return changed


def indexed_datasets(backend: Backend) -> list[str]:
    """Datasets whose personas alias exists (``p4r_<dataset>_personas``)."""
    found = []
    for alias in backend.get_aliases():
        if alias.startswith("p4r_") and alias.endswith("_personas"):
            dataset = alias[len("p4r_"):-len("_personas")]
            if alias_name(dataset, "personas") == alias:
                found.append(dataset)
    return sorted(found)


def recorded_datasets(backend: Backend) -> list[str]:
    """Datasets with at least one swap entry."""
    return sorted({str(p.get("dataset")) for _, p in _entries(backend, ("kind", "swap"))})
