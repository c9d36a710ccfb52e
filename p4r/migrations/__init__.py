"""Ordered, named, idempotent migrations and the swap history, recorded in the store itself."""

from __future__ import annotations

from p4r.migrations.record import (
    RECORD_COLLECTION,
    SwapRecord,
    begin_swap,
    finish_swap,
    reconcile,
    swap_history,
)
from p4r.migrations.schema import (
    MIGRATIONS,
    apply_migrations,
    migrate,
    migration,
    pending_migrations,
)

__all__ = [
    "MIGRATIONS",
    "RECORD_COLLECTION",
    "SwapRecord",
    "apply_migrations",
    "begin_swap",
    "finish_swap",
    "migrate",
    "migration",
    "pending_migrations",
    "reconcile",
    "swap_history",
]
