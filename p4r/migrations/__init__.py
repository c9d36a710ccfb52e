"""Ordered, named, idempotent migrations of p4r's own store layout, recorded in the store.

Each migration is a module of its own with a ``run(backend)`` that touches only the backend it
is given and imports only :mod:`p4r.store` (the way ``llm/migrations.py`` in simonw/llm keeps
each step to the database it gets): a later change to the indexer or the reranker never
changes what an old migration does. A migration's name is its identity in the record, so never
rename or reorder one that has shipped; add one by appending it to :data:`MIGRATIONS`. Every
migration must be idempotent: a crash after it ran but before it was recorded runs it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from p4r.migrations import (
    m001_record_collection,
    m002_record_live_versions,
    m003_integer_point_ids,
    m004_user_state,
)
from p4r.store import history
from p4r.store.base import Backend
from p4r.store.history import SwapRecord

MigrationFn = Callable[[Backend], None]


@dataclass(frozen=True)
class Migration:
    """One registered schema migration."""

    name: str
    fn: MigrationFn


MIGRATIONS: tuple[Migration, ...] = tuple(
    Migration(module.__name__.rsplit(".", 1)[-1], module.run)
    for module in (m001_record_collection, m002_record_live_versions, m003_integer_point_ids,
                   m004_user_state))


def pending_migrations(backend: Backend) -> list[str]:
    """Names of registered migrations not yet recorded as applied, in order."""
    applied = history.applied_schema(backend)
    return [m.name for m in MIGRATIONS if m.name not in applied]


def apply_migrations(backend: Backend) -> list[str]:
    """Run every pending migration in order, recording each; returns the names applied now."""
    applied = history.applied_schema(backend)
    done: list[str] = []
    for step in MIGRATIONS:
        if step.name in applied:
            continue
        step.fn(backend)
        history.record_schema(backend, step.name)
        done.append(step.name)
    return done


def migrate(backend: Backend) -> tuple[list[str], list[SwapRecord]]:
    """Apply pending schema migrations, then settle crash leftovers of every dataset's swaps.

    Returns:
        (names of migrations applied now, swap entries repaired now).
    """
    applied = apply_migrations(backend)
    datasets = set(history.indexed_datasets(backend)) | set(history.recorded_datasets(backend))
    repaired = [r for dataset in sorted(datasets) for r in history.reconcile(backend, dataset)]
    return applied, repaired


__all__ = ["MIGRATIONS", "Migration", "apply_migrations", "migrate", "pending_migrations"]
