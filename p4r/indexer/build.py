"""``index_dataset``: dataset → texts → embeddings (cached) → a complete, published version.

A build always goes into a version that no alias points at; the aliases move only once every
point is in and counted (:mod:`p4r.store.lifecycle`). Re-running an unchanged build is a no-op;
re-running after a crash resumes the unfinished version, skipping points already stored.

The mirror of :func:`p4r.query.open_reranker`: everything comes from the settings, and the
command line, the evaluations, the benchmarks and the tests all build through here, so they
build the same index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from p4r.datasets import dataset_dir, load_dataset
from p4r.datasets.events import EventLog, log_path
from p4r.datasets.models import Dataset
from p4r.encoder.base import TextEncoder
from p4r.encoder.cache import EmbeddingCache, encode_cached, fingerprint_key, text_hash
from p4r.encoder.fingerprint import Fingerprint
from p4r.encoder.model import Encoder
from p4r.errors import ConfigError, DamagedStoreError, InputError, StorageFullError
from p4r.indexer.delta import catalog_change, shape_of
from p4r.indexer.plan import (
    PlannedPoint,
    interaction_records,
    plan_digest,
    plan_points,
    point_content,
    text_of_interactions,
)
from p4r.migrations import apply_migrations
from p4r.settings import DEFAULT_PROFILE, ProfileParams, Settings, VectorDatatype
from p4r.store import catalog, history, open_backend
from p4r.store.base import Backend
from p4r.store.layout import LAYOUTS
from p4r.store.lifecycle import (
    create_version,
    finish_version,
    publish_version,
    repair_aliases,
    verify_version,
)
from p4r.store.manifest import VersionManifest
from p4r.store.naming import CATALOG_KINDS, collection_name
from p4r.store.users import Encode, InteractionRecord, SyncReport, TextOf, UserStore

SHRINK_LIMIT = 0.5  # a new version may not lose more than half of the live one's ... w/o consent
_SOURCE = {"items": "personas"}  # derived kinds read these


class ShrinkError(InputError):
    """The new data would replace most of the live version (``allow_shrink`` to force)."""


@dataclass(frozen=True)
class BuildOptions:
    """How a version is built; :meth:`from_settings` is what every command uses.

    Attributes:
        batch_size: points per encode/upsert batch.
        reindex: allow an encoder different from the live version's (a new version).
        allow_shrink: publish even if the new version loses most of the live one.
        profile: γ and n of the stored user profiles.
        maxsim: also build the per-item MaxSim collection.
        vector_datatype: how the engine stores vectors (float16 halves their memory).
        lock_timeout: seconds to wait for another writer of the store.
        full: build a new version even when the change could go in as a delta.
    """

    batch_size: int = 256
    reindex: bool = False
    allow_shrink: bool = False
    profile: ProfileParams = DEFAULT_PROFILE
    maxsim: bool = False
    vector_datatype: VectorDatatype = "float32"
    lock_timeout: float = 0.0
    full: bool = False  # rebuild the whole catalog even when a delta would do
    delta_limit: float = 0.3  # above this share of items touched, build a new version

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> BuildOptions:
        """The options the settings choose (``P4R_INDEX__*``, γ and n of ``P4R_QUERY__*``),
        with ``overrides`` on top."""
        index = settings.index
        return replace(cls(batch_size=index.batch_size, profile=settings.query.profile,
                           maxsim=index.maxsim, vector_datatype=index.vector_datatype,
                           lock_timeout=index.lock_timeout, delta_limit=index.delta_limit),
                       **overrides)


@dataclass
class UpsertReport:
    """What an upsert did."""

    dataset: str
    version: int
    # "created", "resumed", "reused" (a complete, unpublished version), "unchanged" (verified),
    # "rebuilt" (the live version was damaged), or "delta" (only the touched items written)
    action: str
    counts: dict[str, int] = field(default_factory=dict)
    encoded: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    users: SyncReport | None = None  # what the user-state sync did
    delta_items: int = 0  # items a delta touched (action "delta")
    user_counts: dict[str, int] = field(default_factory=dict)  # interactions, profiles


class _FromSettings:
    """Marker: open this part (cache, event log) from the settings."""


FROM_SETTINGS: Any = _FromSettings()


def index_dataset(
    settings: Settings,
    dataset: Dataset | str,
    *,
    backend: Backend | None = None,
    encoder: TextEncoder | None = None,
    options: BuildOptions | None = None,
    cache: EmbeddingCache | None = FROM_SETTINGS,
    progress: bool | None = None,
    on_batch: Callable[[str, int], None] | None = None,
) -> UpsertReport:
    """Build (or resume, or confirm) the index of ``dataset``; move the aliases when complete.

    Args:
        settings: p4r settings; each part not given below is opened from them.
        dataset: a loaded dataset, or the name of one under ``$P4R_DATA_DIR/datasets``.
        backend: the store (default: ``open_backend(settings)``, closed afterwards).
        encoder: the text encoder (default: ``P4R_ENCODER__*``); its fingerprint is stored.
        options: how to build (default: :meth:`BuildOptions.from_settings`).
        cache: embedding cache (default: ``$P4R_DATA_DIR/cache/embeddings.sqlite``; None: none).
        progress: show progress bars (None: only on a terminal).
        on_batch: called after each stored batch with (kind, points so far); tests use it.

    Returns:
        An :class:`UpsertReport`.
    """
    if isinstance(dataset, str):
        dataset = load_dataset(dataset, dataset_dir(dataset, settings.data_dir))
    options = options or BuildOptions.from_settings(settings)
    with ExitStack() as stack:
        if backend is None:
            backend = stack.enter_context(open_backend(settings))
        if encoder is None:
            encoder = Encoder(settings.encoder)  # loads torch only when it encodes
        if cache is FROM_SETTINGS:
            cache = EmbeddingCache(settings.data_dir / "cache" / "embeddings.sqlite")
            stack.callback(cache.close)
        with backend.writer(f"p4r index upsert --dataset {dataset.name}",
                            options.lock_timeout):
            started = time.perf_counter()
            report, finished = _build(dataset, backend, encoder, options, cache, progress,
                                      on_batch)
            # The user state of the version's encoder is complete before readers see it.
            report.users = _sync_users(dataset, backend, encoder, options, cache, report,
                                       log_path(settings.data_dir, dataset.name))
            if finished is not None:
                publish_version(backend, finished)
            report.seconds = time.perf_counter() - started
            return report


def _build(
    dataset: Dataset, backend: Backend, encoder: TextEncoder, options: BuildOptions,
    cache: EmbeddingCache | None, progress: bool | None,
    on_batch: Callable[[str, int], None] | None,
) -> tuple[UpsertReport, VersionManifest | None]:
    """The catalog version: unchanged (verified), or resumed, reused or built, and finished
    (counted and sealed; returned for publishing once the user state is synced)."""
    started = time.perf_counter()
    fp = encoder.fingerprint
    repaired = repair_aliases(backend)
    apply_migrations(backend)  # llm-style: the store layout is brought up to date on open
    history.reconcile(backend, dataset.name)  # settle a swap a previous run crashed in
    planned = plan_points(dataset, maxsim=options.maxsim)
    plan = {kind: points for kind, points in planned.items() if kind in CATALOG_KINDS}
    digest = plan_digest(plan, options.vector_datatype)
    counts = {kind: len(plan[kind]) for kind in plan}
    shape = shape_of(plan)

    live = catalog.live_version(backend, dataset.name)
    problems = verify_version(backend, dataset.name, live) if live is not None else []
    if live is not None and not problems:
        current = catalog.read_manifest(backend, dataset.name, live)
        if not options.reindex:
            _check_encoder(current, fp)
        merge = options.full and current.base is not None  # --full folds an overlay in
        if current.digest == digest and current.same_encoder(fp) and not merge:
            return UpsertReport(dataset.name, live, "unchanged", counts, 0,
                                time.perf_counter() - started, repaired), None
        if not options.allow_shrink:
            _check_shrink(current, shape)
        if _delta_allowed(current, fp, plan, options) and not _resumable(
                backend, dataset.name, live, digest, fp):
            applied = _apply_delta(backend, current, plan, digest, counts, shape, encoder,
                                   cache, options.delta_limit)
            if applied is not None:
                published, encoded, touched = applied
                return UpsertReport(dataset.name, published.version, "delta", counts, encoded,
                                    time.perf_counter() - started, repaired,
                                    delta_items=touched), None

    manifest, action = _pick_version(backend, dataset.name, live, digest, fp, set(plan))
    if manifest is None:
        _check_space(backend, plan, len(dataset.interactions), fp.dim)
        version = max([*catalog.versions(backend, dataset.name), 0]) + 1
        manifest = VersionManifest(
            dataset=dataset.name, version=version, digest=digest, encoder=fp.as_dict(),
            counts=counts, shape=shape, vector_datatype=options.vector_datatype,
            created_at=time.time())
        create_version(backend, manifest, plan, fp.dim, max_group_size=shape["max_group"])
    encoded = _store_points(manifest, plan, backend, encoder, cache, options.batch_size,
                            resume=action != "created", progress=progress, on_batch=on_batch)
    finished = finish_version(backend, manifest)
    return UpsertReport(dataset.name, manifest.version, "rebuilt" if problems else action,
                        counts, encoded, time.perf_counter() - started,
                        repaired + problems), finished


# Bytes a stored point costs beyond its vector (payload, ids, index and segment overhead, the
# optimiser's copy while sealing), and a fixed cost per collection: measured on the Yelp
# sample and the 125K bench with room to spare. A build that runs out of disk midway dies of
# SIGBUS in the engine's memory-mapped files, so it is refused before it starts instead.
_POINT_OVERHEAD = 4096
_COLLECTION_OVERHEAD = 64 * 2**20


def _check_space(backend: Backend, plan: dict[str, list[PlannedPoint]], interactions: int,
                 dim: int) -> None:
    """Refuse a build the store's disk cannot hold (one line: where, and how much)."""
    free = backend.free_bytes()
    if free is None:
        return
    points = sum(len(points) for points in plan.values())
    need = (points * (2 * dim * 4 + _POINT_OVERHEAD) + len(plan) * _COLLECTION_OVERHEAD
            + interactions * (dim * 4 + 1024))
    if free < need:
        raise StorageFullError(
            backend.describe(), f"a new version needs about {need / 2**20:,.0f} MB and "
            f"{free / 2**20:,.0f} MB are free; nothing was written")


def _resumable(backend: Backend, dataset: str, live: int, digest: str, fp: Fingerprint) -> bool:
    """Whether an unpublished full build of exactly this data is there to resume (a crash
    is finished where it stopped, not redone as a delta)."""
    for number, kinds in catalog.versions(backend, dataset).items():
        if number == live or "personas" not in kinds:
            continue
        try:
            manifest = catalog.read_manifest(backend, dataset, number)
        except DamagedStoreError:
            continue
        if manifest.digest == digest and manifest.same_encoder(fp) and manifest.base is None:
            return True
    return False


def _delta_allowed(live: VersionManifest, fp: Fingerprint, plan: dict[str, list[PlannedPoint]],
                   options: BuildOptions) -> bool:
    """A change may go in as a delta: same encoder, storage and kinds, and no --full."""
    return (not options.full and live.same_encoder(fp)
            and live.vector_datatype == options.vector_datatype
            and set(live.counts) == set(plan))


def _apply_delta(backend: Backend, live: VersionManifest, plan: dict[str, list[PlannedPoint]],
                 digest: str, counts: dict[str, int], shape: dict[str, int],
                 encoder: TextEncoder, cache: EmbeddingCache | None, limit: float,
                 ) -> tuple[VersionManifest, int, int] | None:
    """Write only the touched items through the engine's delta strategy (in place on a
    server, an overlay version on Edge); None when a full build is due instead."""
    encoded = 0

    def encode(points: Sequence[PlannedPoint]) -> np.ndarray:
        nonlocal encoded

        def counting(texts: Sequence[str]) -> np.ndarray:
            nonlocal encoded
            encoded += len(texts)
            return encoder.encode(texts)

        if not points:
            return np.zeros((0, encoder.fingerprint.dim), dtype=np.float32)
        return encode_cached([p.text for p in points], encoder.fingerprint, counting, cache)

    new = VersionManifest(dataset=live.dataset, version=live.version, digest=digest,
                          encoder=encoder.fingerprint.as_dict(), counts=counts, shape=shape,
                          vector_datatype=live.vector_datatype, created_at=time.time())
    change = catalog_change(backend, live, plan, new, encode, limit=limit)
    if change is None:
        return None
    published = backend.catalog_delta().apply(backend, live, change)
    return published, encoded, len(change.touched)


def _check_encoder(live: VersionManifest, fp: Fingerprint) -> None:
    """Refuse to upsert with an encoder that differs from the live version's."""
    stored = live.fingerprint
    if stored is None:
        return
    name = collection_name(live.dataset, "personas", live.version)
    if stored.dim != fp.dim:
        raise ConfigError(
            f"vector dimension mismatch: {name} holds {stored.dim}-d vectors from "
            f"{stored.model}, but P4R_ENCODER__MODEL={fp.model} makes {fp.dim}-d vectors; "
            "pass --reindex to build a new version with this encoder")
    if not stored.accepts(fp):
        raise ConfigError(
            f"encoder fingerprint mismatch: {name} was built with {stored.short()}, the "
            f"configured encoder is {fp.short()}; pass --reindex to build a new version with it")


def _check_shrink(live: VersionManifest, new: dict[str, int]) -> None:
    """Refuse a version that loses most of the live one's personas, items or users."""
    old = live.shape
    lost = [f"{key} {old[key]} → {new.get(key, 0)}" for key in ("personas", "items")
            if old.get(key) and new.get(key, 0) < old[key] * SHRINK_LIMIT]
    if lost:
        raise ShrinkError(
            f"refusing to replace live version {live.version} of {live.dataset!r}: the new "
            f"data loses most of it ({', '.join(lost)}); check the input files, or allow it "
            "with allow_shrink")


def _pick_version(
    backend: Backend, dataset: str, live: int | None, digest: str, fp: Fingerprint,
    planned: set[str],
) -> tuple[VersionManifest | None, str]:
    """An unpublished version of exactly this build to resume or reuse; abandoned builds of
    other data are discarded on the way."""
    found, action = None, "created"
    for number, kinds in catalog.versions(backend, dataset).items():
        if number == live:
            continue
        try:
            manifest = catalog.read_manifest(backend, dataset, number) \
                if "personas" in kinds else None
        except DamagedStoreError:
            manifest = None  # unreadable: never reused, dropped below
        same = (manifest is not None and set(kinds) >= planned and manifest.digest == digest
                and manifest.same_encoder(fp) and manifest.base is None)
        if same and found is None:
            # A complete one is left over from a crash before its swap, or is an older version
            # of exactly this build (a rollback): publish it instead of building a copy.
            found = manifest
            action = "reused" if manifest is not None and manifest.complete else "resumed"
        elif manifest is None or not manifest.complete:
            for name in kinds.values():  # an abandoned build of other data: discard it
                backend.drop_collection(name)
    return found, action


def _store_points(
    manifest: VersionManifest, plan: dict[str, list[PlannedPoint]], backend: Backend,
    encoder: TextEncoder, cache: EmbeddingCache | None, batch_size: int, *, resume: bool,
    progress: bool | None, on_batch: Callable[[str, int], None] | None,
) -> int:
    """Write every missing point of every kind; returns how many texts were encoded."""
    fp = encoder.fingerprint
    encoded = 0

    def count_encode(texts: Sequence[str]) -> np.ndarray:
        nonlocal encoded
        encoded += len(texts)
        return encoder.encode(texts)

    dataset, version = manifest.dataset, manifest.version
    for kind, points in plan.items():
        name = collection_name(dataset, kind, version)
        source = collection_name(dataset, _SOURCE.get(kind, kind), version)
        with tqdm(total=len(points), desc=f"{dataset} {kind}", unit="pt",
                  disable=None if progress is None else not progress, leave=False) as bar:
            done = 0
            for batch in _batches(points, batch_size):
                present = backend.existing_ids(name, [p.id for p in batch]) if resume else set()
                todo = [p for p in batch if p.id not in present]
                if todo:
                    if LAYOUTS[kind].from_text:
                        vectors: Any = encode_cached([p.text for p in todo], fp, count_encode,
                                                     cache)
                    else:
                        vectors = _derived_vectors(backend, source, kind, todo)
                    backend.upsert(name, [p.id for p in todo], vectors,
                                   [{**p.payload, "h": point_content(p)} for p in todo])
                done += len(batch)
                bar.update(len(batch))
                if on_batch:
                    on_batch(kind, done)
    return encoded


def _batches(seq: Sequence[PlannedPoint], size: int) -> Iterator[Sequence[PlannedPoint]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def _import_legacy_log(path: Path | None, dataset: str, store: UserStore, text_of: TextOf,
                       encode: Encode) -> int:
    """Live interactions of the event log p4r kept per machine before the user state (an
    sqlite file under ``$P4R_DATA_DIR/events``): recorded into the user state once, then the
    file is renamed ``*.imported`` so nothing is read twice."""
    if path is None or not path.exists():
        return 0
    log = EventLog(path)
    try:
        events = log.since(0)
        stored = log.vectors([e.seq for e in events], fingerprint_key(store.fingerprint))
    finally:
        log.close()
    records = [InteractionRecord(user_id=e.user_id, item_id=e.item_id, timestamp=e.timestamp,
                                 rating=e.rating, text=e.text, aspects=e.aspects, origin="live")
               for e in events if not store.forgotten(e.user_id)]
    if records:
        texts = [text_of(r) for r in records]
        missing = [i for i, e in enumerate(events) if e.seq not in stored]
        fresh = encode([texts[i] for i in missing]) if missing else []
        vectors = [stored.get(e.seq) for e in events]
        for i, vector in zip(missing, fresh, strict=True):
            vectors[i] = vector
        records = [replace(r, text_hash=text_hash(t)) for r, t in zip(records, texts,
                                                                       strict=True)]
        store.record(records, np.stack(vectors))
    path.rename(path.with_name(path.name + ".imported"))
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return len(records)


def _derived_vectors(backend: Backend, source: str, kind: str,
                     points: Sequence[PlannedPoint]) -> Any:
    """Vectors computed from stored ones: each item's persona matrix (MaxSim)."""
    wanted = list(dict.fromkeys(pid for p in points for pid in p.sources))
    stored = backend.retrieve_vectors(source, wanted)
    missing = [pid for pid in wanted if pid not in stored]
    if missing:
        raise ConfigError(f"{source} lacks {len(missing)} point(s) {kind} are built from; "
                          "re-run the upsert to resume")
    return [np.stack([stored[pid] for pid in p.sources]) for p in points]


def _sync_users(dataset: Dataset, backend: Backend, encoder: TextEncoder, options: BuildOptions,
                cache: EmbeddingCache | None, report: UpsertReport,
                legacy_log: Path | None) -> SyncReport:
    """Bring the dataset's interactions into the user state of the version's encoder (live
    interactions are kept; forgotten users are skipped); counts go into ``report``."""
    store = backend.user_store(dataset.name, encoder.fingerprint, options.profile)
    records, _ = interaction_records(dataset)
    held = store.file_keys()
    remove = held - {r.key(dataset.name) for r in records}
    if held and len(remove) > len(held) * SHRINK_LIMIT and not options.allow_shrink:
        raise ShrinkError(
            f"refusing to remove {len(remove)} of the {len(held)} interactions of "
            f"{dataset.name!r} that came from its files: the new files lack them; check the "
            "input files, or allow it with allow_shrink")

    def encode(texts: Sequence[str]) -> np.ndarray:
        return encode_cached(texts, encoder.fingerprint, encoder.encode, cache)

    text_of = text_of_interactions(dataset)
    _import_legacy_log(legacy_log, dataset.name, store, text_of, encode)
    synced = store.sync(records, text_of, encode, remove=remove)
    report.encoded += synced.encoded
    report.user_counts = {"interactions": synced.interactions, "profiles": synced.users}
    return synced
