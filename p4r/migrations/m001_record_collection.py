"""m001: create the record (``records.json`` on Edge, ``p4r_migrations`` on a server), where
the swap history and the applied migrations live."""

from __future__ import annotations

from p4r.store.base import Backend


def run(backend: Backend) -> None:
    """Create the record if missing (never recreate it: that would erase history)."""
    backend.ensure_record()
