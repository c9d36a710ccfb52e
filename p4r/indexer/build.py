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
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from p4r.datasets import dataset_dir, load_dataset
from p4r.datasets.events import EventLog, log_path
from p4r.datasets.models import Dataset, Interaction
from p4r.encoder.base import TextEncoder
from p4r.encoder.cache import EmbeddingCache, encode_cached
from p4r.encoder.fingerprint import Fingerprint
from p4r.encoder.model import Encoder
from p4r.encoder.profile import user_vector
from p4r.errors import ConfigError, DamagedStoreError, InputError
from p4r.indexer.plan import PlannedPoint, plan_digest, plan_points
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
from p4r.store.naming import collection_name

SHRINK_LIMIT = 0.5  # a new version may not lose more than half of the live one's ... w/o consent
_SOURCE = {"items": "personas", "profiles": "interactions"}  # derived kinds read these


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
    """

    batch_size: int = 256
    reindex: bool = False
    allow_shrink: bool = False
    profile: ProfileParams = DEFAULT_PROFILE
    maxsim: bool = False
    vector_datatype: VectorDatatype = "float32"
    lock_timeout: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> BuildOptions:
        """The options the settings choose (``P4R_INDEX__*``, γ and n of ``P4R_QUERY__*``),
        with ``overrides`` on top."""
        index = settings.index
        return replace(cls(batch_size=index.batch_size, profile=settings.query.profile,
                           maxsim=index.maxsim, vector_datatype=index.vector_datatype,
                           lock_timeout=index.lock_timeout), **overrides)


@dataclass
class UpsertReport:
    """What an upsert did."""

    dataset: str
    version: int
    # "created", "resumed", "reused" (a complete, unpublished version), "unchanged" (verified),
    # or "rebuilt" (the live version was damaged)
    action: str
    counts: dict[str, int] = field(default_factory=dict)
    encoded: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


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
    events: EventLog | None = FROM_SETTINGS,
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
        events: the Edge event log whose live interactions the version folds in (default: the
            dataset's log under ``$P4R_DATA_DIR/events`` when it exists; None: none).
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
        if events is FROM_SETTINGS:
            path = log_path(settings.data_dir, dataset.name)
            events = EventLog(path) if path.exists() else None
            if events is not None:
                stack.callback(events.close)
        dataset, log_seq = with_logged_events(dataset, events)
        with backend.writer(f"p4r-index upsert --dataset {dataset.name}",
                            options.lock_timeout):
            return _build(dataset, backend, encoder, options, cache, log_seq, progress,
                          on_batch)


def _build(
    dataset: Dataset, backend: Backend, encoder: TextEncoder, options: BuildOptions,
    cache: EmbeddingCache | None, log_seq: int, progress: bool | None,
    on_batch: Callable[[str, int], None] | None,
) -> UpsertReport:
    started = time.perf_counter()
    fp = encoder.fingerprint
    repaired = repair_aliases(backend)
    apply_migrations(backend)  # llm-style: the store layout is brought up to date on open
    history.reconcile(backend, dataset.name)  # settle a swap a previous run crashed in
    plan = plan_points(dataset, options.profile, maxsim=options.maxsim)
    digest = plan_digest(plan, options.profile, options.vector_datatype)
    counts = {kind: len(plan[kind]) for kind in plan}
    group_sizes = Counter(str(p.payload["item_id"]) for p in plan["personas"])
    shape = {"personas": counts.get("personas", 0), "items": len(group_sizes),
             "users": counts["profiles"]}

    live = catalog.live_version(backend, dataset.name)
    problems = verify_version(backend, dataset.name, live) if live is not None else []
    if live is not None and not problems:
        current = catalog.read_manifest(backend, dataset.name, live)
        if not options.reindex:
            _check_encoder(current, fp)
        if current.digest == digest and current.same_encoder(fp):
            return UpsertReport(dataset.name, live, "unchanged", counts, 0,
                                time.perf_counter() - started, repaired)
        if not options.allow_shrink:
            _check_shrink(current, shape)

    manifest, action = _pick_version(backend, dataset.name, live, digest, fp, set(plan))
    if manifest is None:
        version = max([*catalog.versions(backend, dataset.name), 0]) + 1
        manifest = VersionManifest(
            dataset=dataset.name, version=version, digest=digest, encoder=fp.as_dict(),
            counts=counts, shape=shape, profile=options.profile,
            vector_datatype=options.vector_datatype, log_seq=log_seq, created_at=time.time())
        create_version(backend, manifest, plan, fp.dim,
                       max_group_size=max(group_sizes.values(), default=0))
    encoded = _store_points(manifest, plan, backend, encoder, cache, options.batch_size,
                            resume=action != "created", progress=progress, on_batch=on_batch)
    publish_version(backend, finish_version(backend, manifest))
    return UpsertReport(dataset.name, manifest.version, "rebuilt" if problems else action,
                        counts, encoded, time.perf_counter() - started, repaired + problems)


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
    lost = [f"{key} {old[key]} → {new.get(key, 0)}" for key in ("personas", "items", "users")
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
                and manifest.same_encoder(fp))
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
                        vectors = _derived_vectors(backend, source, kind, todo, manifest)
                    backend.upsert(name, [p.id for p in todo], vectors, [p.payload for p in todo])
                done += len(batch)
                bar.update(len(batch))
                if on_batch:
                    on_batch(kind, done)
    return encoded


def _batches(seq: Sequence[PlannedPoint], size: int) -> Iterator[Sequence[PlannedPoint]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def _derived_vectors(
    backend: Backend, source: str, kind: str, points: Sequence[PlannedPoint],
    manifest: VersionManifest,
) -> Any:
    """Vectors computed from stored ones: an item's persona matrix (MaxSim), or a user's decayed
    profile over the last n interactions (oldest first in ``sources``)."""
    wanted = list(dict.fromkeys(pid for p in points for pid in p.sources))
    stored = backend.retrieve_vectors(source, wanted)
    missing = [pid for pid in wanted if pid not in stored]
    if missing:
        raise ConfigError(f"{source} lacks {len(missing)} point(s) {kind} are built from; "
                          "re-run the upsert to resume")
    if LAYOUTS[kind].multivector:
        return [np.stack([stored[pid] for pid in p.sources]) for p in points]
    profile = manifest.profile or DEFAULT_PROFILE
    return np.stack([user_vector(np.stack([stored[pid] for pid in p.sources]),
                                 gamma=profile.gamma, last_n=profile.last_n) for p in points])


def with_logged_events(dataset: Dataset, log: EventLog | None) -> tuple[Dataset, int]:
    """The dataset plus every interaction logged online (so a re-index loses nothing), and
    the log position it includes."""
    if log is None:
        return dataset, 0
    events = log.since(0)
    if not events:
        return dataset, 0
    known = {(i.user_id, i.item_id, i.timestamp) for i in dataset.interactions}
    extra = [Interaction(user_id=e.user_id, item_id=e.item_id, timestamp=e.timestamp,
                         rating=e.rating, text=e.text, aspects=e.aspects,
                         item_summary=dataset.items[e.item_id].summary
                         if e.item_id in dataset.items else "")
             for e in events if (e.user_id, e.item_id, e.timestamp) not in known]
    merged = sorted([*dataset.interactions, *extra],
                    key=lambda i: (i.user_id, i.timestamp, i.item_id))
    return replace(dataset, interactions=merged), max(e.seq for e in events)


