"""m002: give every dataset indexed before the swap history existed an entry for its live
version."""

from __future__ import annotations

from p4r.store import history
from p4r.store.base import Backend


def run(backend: Backend) -> None:
    """Record an ``unrecorded`` swap to each indexed dataset's live version."""
    for dataset in history.indexed_datasets(backend):
        history.reconcile(backend, dataset)
