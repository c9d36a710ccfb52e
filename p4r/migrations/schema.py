"""Schema migrations of p4r's own store layout: plain functions, registered in order, by name.

Add a migration by appending a function decorated with :func:`migration`; its name is its
identity in the record, so never rename or reorder one that has shipped. Every migration must
be idempotent: a crash after it ran but before it was recorded runs it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from p4r.collections.base import Backend
from p4r.migrations import record

MigrationFn = Callable[[Backend], None]


@dataclass(frozen=True)
class Migration:
    """One registered schema migration."""

    name: str
    fn: MigrationFn


MIGRATIONS: list[Migration] = []


def migration(fn: MigrationFn) -> MigrationFn:
    """Register ``fn`` as the next migration, named after the function."""
    if any(m.name == fn.__name__ for m in MIGRATIONS):
        raise ValueError(f"migration {fn.__name__!r} is registered twice")
    MIGRATIONS.append(Migration(fn.__name__, fn))
    return fn


def pending_migrations(backend: Backend) -> list[str]:
    """Names of registered migrations not yet recorded as applied, in order."""
    applied = record.applied_schema(backend)
    return [m.name for m in MIGRATIONS if m.name not in applied]


def apply_migrations(backend: Backend) -> list[str]:
    """Run every pending migration in order, recording each; returns the names applied now."""
    applied = record.applied_schema(backend)
    done: list[str] = []
    for step in MIGRATIONS:
        if step.name in applied:
            continue
        step.fn(backend)
        record.record_schema(backend, step.name)
        done.append(step.name)
    return done


# -- the migrations, oldest first ----------------------------------------------------------------
@migration
def m001_record_collection(backend: Backend) -> None:
    """Create ``p4r_migrations``, where this record and the swap history live."""
    record.ensure_record_collection(backend)


@migration
def m002_record_live_versions(backend: Backend) -> None:
    """Give every dataset indexed before the swap history existed an entry for its live version."""
    for dataset in record.indexed_datasets(backend):
        record.reconcile(backend, dataset)


@migration
def m003_integer_point_ids(backend: Backend) -> None:
    """Move every dataset whose live version uses uuid point ids (id scheme 1) to a new version
    with 63-bit integer ids, profile points and the per-item MaxSim collection, copied from the
    stored vectors (no dataset files or encoder needed); the old version stays until pruned."""
    from p4r.indexer.rebuild import rebuild_with_integer_ids

    for dataset in record.indexed_datasets(backend):
        rebuild_with_integer_ids(backend, dataset)


def migrate(backend: Backend) -> tuple[list[str], list[record.SwapRecord]]:
    """Apply pending schema migrations, then settle crash leftovers of every dataset's swaps.

    Returns:
        (names of migrations applied now, swap entries repaired now).
    """
    applied = apply_migrations(backend)
    datasets = set(record.indexed_datasets(backend)) | set(record.recorded_datasets(backend))
    repaired = [r for dataset in sorted(datasets) for r in record.reconcile(backend, dataset)]
    return applied, repaired
