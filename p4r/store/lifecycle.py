"""The life of a catalog version: create, finish, publish, verify, check, status, prune, drop.

A version is built into collections no alias points at, finished (every count checked, every
collection sealed, the manifest marked complete) and then published: its aliases move in one
atomic update, recorded in the swap history pending before and applied after, so a crash on
either side is settled by :func:`~p4r.store.history.reconcile`. Old versions stay until
:func:`prune_versions` removes them, so serving processes can keep answering from the version
they hold until they refresh.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from p4r.encoder.fingerprint import Fingerprint
from p4r.errors import (
    ConfigError,
    DamagedStoreError,
    NotIndexedError,
    P4RError,
    StorageFullError,
)
from p4r.settings import DEFAULT_PROFILE
from p4r.store import catalog, history
from p4r.store.base import Backend
from p4r.store.history import SwapRecord, begin_swap, finish_swap
from p4r.store.layout import LAYOUTS, collection_spec
from p4r.store.manifest import VersionManifest
from p4r.store.naming import (
    CATALOG_KINDS,
    CORE_KINDS,
    KINDS,
    alias_name,
    collection_name,
    parse_collection_name,
)


# -- building --------------------------------------------------------------------------------
def create_version(backend: Backend, manifest: VersionManifest, kinds: Iterable[str], dim: int,
                   *, max_group_size: int | None = None) -> None:
    """Create the (empty) collections of a new version, each carrying its manifest."""
    for kind in kinds:
        backend.create_collection(collection_spec(manifest, kind, dim,
                                                  max_group_size=max_group_size))


def finish_version(backend: Backend, manifest: VersionManifest) -> VersionManifest:
    """Check every count, seal each collection for sharing, and mark the version complete.

    Raises:
        ConfigError: a collection does not hold the points the manifest counts (a build to
            resume).
    """
    names = {kind: collection_name(manifest.dataset, kind, manifest.version)
             for kind in manifest.counts}
    for kind, name in names.items():
        stored = backend.count(name)
        if stored != manifest.counts[kind]:
            raise ConfigError(f"{name} holds {stored} points, expected "
                              f"{manifest.counts[kind]}; re-run the upsert to resume")
    for name in names.values():
        backend.seal(name)
    complete = manifest.completed()
    for kind, name in names.items():
        backend.update_metadata(name, complete.collection_metadata(kind))
    return complete


def swap_reason(backend: Backend, dataset: str, from_version: int | None,
                encoder: dict[str, Any] | None) -> str:
    """Why the aliases move: ``created`` (first version), ``reindex`` (new encoder),
    ``update`` (same encoder), ``repair`` (the version it replaces is damaged)."""
    if from_version is None:
        return "created"
    try:
        previous = catalog.read_manifest(backend, dataset, from_version).fingerprint
    except P4RError:
        return "repair"
    same = previous is not None and encoder is not None and \
        previous == Fingerprint.from_dict(encoder)
    return "update" if same else "reindex"


def publish_version(backend: Backend, manifest: VersionManifest) -> SwapRecord:
    """Move the aliases to a complete version, recorded pending before and applied after.

    A crash between the steps leaves a pending entry that the next upsert (or
    ``p4r index migrate``) settles from where the aliases actually point.
    """
    dataset = manifest.dataset
    encoder = dict(manifest.encoder) if manifest.encoder else None
    live = catalog.live_version(backend, dataset)
    entry = begin_swap(backend, SwapRecord(
        dataset=dataset, from_version=live, to_version=manifest.version, encoder=encoder,
        counts=dict(manifest.counts), reason=swap_reason(backend, dataset, live, encoder)))
    backend.check_writer()  # fencing: a writer that lost its lease publishes nothing
    catalog.swap_aliases(backend, dataset, manifest.version)
    return finish_swap(backend, entry)


# -- checking --------------------------------------------------------------------------------
def verify_version(backend: Backend, dataset: str, version: int) -> list[str]:
    """What is wrong with a stored version (empty when it is whole): every collection opens,
    holds its recorded count and its payload indexes, under one encoder fingerprint."""
    problems: list[str] = []
    kinds = catalog.versions(backend, dataset).get(version, {})
    try:
        manifest = catalog.read_manifest(backend, dataset, version)
    except P4RError as exc:
        return [str(exc)]
    expected = {k: v for k, v in manifest.counts.items() if k in CATALOG_KINDS}
    for kind in [k for k in CATALOG_KINDS if k in expected or k in CORE_KINDS]:
        name = kinds.get(kind)
        if name is None:
            problems.append(f"{collection_name(dataset, kind, version)} is missing")
            continue
        try:
            own = VersionManifest.from_metadata(backend.get_metadata(name), dataset=dataset,
                                                version=version)
            stored = backend.count(name)
            indexes = backend.payload_indexes(name)
            problems += backend.check_collection(name)
        except StorageFullError:
            raise  # a full disk is not damage: say so instead of calling the version DAMAGED
        except P4RError as exc:
            problems.append(str(exc))
            continue
        if kind in expected and stored != int(expected[kind]):
            problems.append(f"{name} holds {stored} points, {expected[kind]} were recorded")
        lacking = set(LAYOUTS[kind].keyword_indexes) - indexes if indexes is not None else set()
        if lacking:
            problems.append(f"{name} lacks payload index(es) {', '.join(sorted(lacking))}")
        if own.encoder != manifest.encoder:
            problems.append(f"{name} has another encoder fingerprint than its version")
        if not own.complete:
            problems.append(f"{name} is in state {own.state!r}, not complete")
    return problems


def check_dataset(backend: Backend, dataset: str, version: int | None = None) -> dict[str, Any]:
    """Verify a version (default: the live one) and the aliases that point at it."""
    aliases = backend.get_aliases()
    live = catalog.live_version(backend, dataset)
    target = version if version is not None else live
    if target is None:
        raise NotIndexedError(f"dataset {dataset!r} is not indexed in {backend.describe()} "
                              f"(run: p4r index upsert --dataset {dataset})")
    problems = verify_version(backend, dataset, target)
    base = catalog.read_manifest(backend, dataset, target).base \
        if not problems else None
    if base is not None:  # an overlay answers with its base: both must be whole
        problems += [f"base v{base}: {p}" for p in verify_version(backend, dataset, base)]
    if target == live:
        for kind in CATALOG_KINDS:
            alias = alias_name(dataset, kind)
            pointed = aliases.get(alias)
            if pointed is None:
                if kind in CORE_KINDS:
                    problems.append(f"alias {alias} is missing")
                continue
            parsed = parse_collection_name(pointed)
            if parsed is None or parsed[0] != dataset or parsed[1] != kind or parsed[2] != live:
                problems.append(f"alias {alias} points at {pointed}, not a {kind} collection "
                                f"of v{live}")
    return {"dataset": dataset, "version": target, "live": target == live, "ok": not problems,
            "problems": problems}


def dataset_status(backend: Backend, dataset: str, *, tolerate: bool = False) -> dict[str, Any]:
    """Counts and identity of the live index of ``dataset`` (NotIndexedError if none): its
    catalog version, and the user state of its encoder.

    With ``tolerate`` (a damaged version), a count the engine cannot give is None.
    """

    def counted(fn: Callable[..., Any], *args: str) -> Any:
        try:
            return fn(*args)
        except P4RError:
            if tolerate:
                return None
            raise

    personas = catalog.live_collection(backend, dataset, "personas")
    summaries = catalog.live_collection(backend, dataset, "summaries")
    manifest = VersionManifest.from_metadata(backend.get_metadata(personas), dataset=dataset)
    fingerprint = manifest.fingerprint
    users = counted(lambda: backend.user_store(dataset, fingerprint, DEFAULT_PROFILE).counts()) \
        if fingerprint is not None else None
    states = {}
    for number, kinds in catalog.versions(backend, dataset).items():
        if "personas" in kinds:
            meta = backend.get_metadata(kinds["personas"])
            states[str(number)] = VersionManifest.from_metadata(meta).state
    return {
        "dataset": dataset,
        "backend": backend.describe(),
        "personas": counted(backend.count, personas),
        "items": counted(backend.count_distinct, personas, "item_id"),
        "summaries": counted(backend.count, summaries),
        "interactions": users["interactions"] if users else None,
        "users": users["users"] if users else None,
        "profiles": users["users"] if users else None,
        "forgotten": users["forgotten"] if users else None,
        "collection": personas,
        "alias": alias_name(dataset, "personas"),
        "version": manifest.version,
        "encoder": dict(manifest.encoder) if manifest.encoder else None,
        "versions": states,
        "migrations": [r.as_dict() for r in history.swap_history(backend, dataset)],
    }


# -- repairing -------------------------------------------------------------------------------
def restore_aliases(backend: Backend, datasets: list[str]) -> dict[str, str]:
    """Rebuild a damaged alias record from the swap history: each dataset's aliases go back to
    the version its last applied swap published (if its collections are still there)."""
    mapping: dict[str, str] = {}
    for dataset in datasets:
        applied = [r for r in history.swap_history(backend, dataset) if r.state == "applied"]
        target = applied[-1].to_version if applied else None
        present = catalog.versions(backend, dataset).get(target, {}) \
            if target is not None else {}
        if "personas" in present:
            mapping.update({alias_name(dataset, k): name for k, name in present.items()})
    backend.replace_aliases(mapping)
    return mapping


def repair_aliases(backend: Backend) -> list[str]:
    """A damaged alias record is rebuilt from the swap history; returns what was repaired."""
    try:
        backend.get_aliases()
        return []
    except DamagedStoreError as exc:
        restored = restore_aliases(backend, history.recorded_datasets(backend))
        return [f"{exc} (restored {len(restored)} alias(es) from the swap history)"]


# -- removing --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DropReport:
    """What :func:`drop_dataset` removed: version collections, and the user state (its files
    on Edge, its collections on a server)."""

    collections: tuple[str, ...]
    user_state: tuple[str, ...]


def drop_dataset(backend: Backend, dataset: str) -> DropReport:
    """Remove the aliases first (queries stop at once), then every version's collections,
    then the user state (interactions, profiles, forgotten users) of every encoder.

    The swap history is kept (it is an audit log) and gets a ``dropped`` entry.
    """
    history.ensure_record_collection(backend)
    live = catalog.live_version(backend, dataset)
    entry = None
    if live is not None:
        entry = begin_swap(backend, SwapRecord(dataset=dataset, from_version=live,
                                               to_version=None, reason="dropped"))
    with backend.writer(f"p4r index drop --dataset {dataset}"):
        backend.set_aliases({alias_name(dataset, k): None for k in KINDS})
    if entry is not None:
        finish_swap(backend, entry)
    dropped = []
    with backend.writer(f"p4r index drop --dataset {dataset}"):
        for kinds in catalog.versions(backend, dataset).values():
            for name in kinds.values():
                backend.drop_collection(name)
                dropped.append(name)
        users = backend.drop_user_state(dataset)
    return DropReport(tuple(dropped), tuple(users))


@dataclass(frozen=True)
class PrunedVersion:
    """A version :func:`prune_versions` removes (or would remove), and why."""

    version: int
    state: str  # "complete", "building" or "broken" (some collections or metadata missing)
    collections: tuple[str, ...]


def prune_plan(backend: Backend, dataset: str, keep: int = 1) -> list[PrunedVersion]:
    """Versions :func:`prune_versions` would delete; the live one is never among them.

    Args:
        backend: the store.
        dataset: dataset name.
        keep: complete versions to keep, counting the live one (1: only the live version);
            the others kept are the newest. Building and broken versions are always listed.
    """
    if keep < 1:
        raise ConfigError(f"--keep must be at least 1 (the live version), got {keep}")
    live = catalog.live_version(backend, dataset)
    stored = catalog.versions(backend, dataset)
    complete: list[int] = []
    doomed: list[PrunedVersion] = []
    protected = {live, *_bases(backend, dataset, [live] if live is not None else [])}
    for number, kinds in stored.items():
        if number in protected:
            continue
        manifest = VersionManifest.from_metadata(backend.get_metadata(kinds["personas"])) \
            if "personas" in kinds else None
        whole = set(kinds) >= set(CORE_KINDS)
        if manifest is not None and manifest.complete and whole:
            complete.append(number)
            continue
        state = manifest.state if manifest is not None and whole else "broken"
        doomed.append(PrunedVersion(number, state, _drop_order(kinds)))
    # Without a live version nothing is protected by the alias, so every complete one is kept.
    extra = keep - 1 if live is not None else len(complete)
    kept = set(sorted(complete, reverse=True)[:extra])
    kept |= _bases(backend, dataset, sorted(kept))  # a kept overlay keeps its base
    for number in complete:
        if number not in kept:
            doomed.append(PrunedVersion(number, "complete", _drop_order(stored[number])))
    return sorted(doomed, key=lambda v: v.version)


def _bases(backend: Backend, dataset: str, versions: list[int]) -> set[int]:
    """The base versions the given (overlay) versions answer with."""
    bases = set()
    for number in versions:
        try:
            base = catalog.read_manifest(backend, dataset, number).base
        except P4RError:
            continue
        if base is not None:
            bases.add(base)
    return bases


def _drop_order(kinds: dict[str, str]) -> tuple[str, ...]:
    """Personas last: until it goes, the version still reads as itself and a re-run finishes."""
    return tuple(kinds[k] for k in sorted(kinds, key=lambda k: k == "personas"))


def prune_versions(backend: Backend, dataset: str, keep: int = 1) -> list[PrunedVersion]:
    """Delete old complete versions beyond ``keep`` and every abandoned build; never the live one.

    Serving processes still holding a pruned version fail on their next query, so prune after
    they have refreshed (see :meth:`p4r.query.Reranker.refresh`), and not while an upsert of
    the same dataset runs (its building version would be removed).
    """
    removed = []
    with backend.writer(f"p4r index prune --dataset {dataset}"):  # never during a build
        for doomed in prune_plan(backend, dataset, keep):
            if catalog.live_version(backend, dataset) == doomed.version:
                continue  # the alias moved to it since the plan was made: it is live now
            for name in doomed.collections:
                backend.drop_collection(name)
            removed.append(doomed)
    return removed
