"""Upsert pipeline: dataset → texts → embeddings (cached) → a complete collection version.

A build always goes into a version that no alias points at; the aliases move only once every
point is in and counted. Re-running an unchanged build is a no-op; re-running after a crash
resumes the unfinished version, skipping points already stored. Every alias move is written to
the swap history in the store (pending before the move, applied after; see
:mod:`p4r.migrations.record`), and old versions stay until :func:`prune_versions` removes them,
so serving processes can keep answering from the version they hold until they refresh.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from p4r.collections import catalog
from p4r.collections.base import Backend, CollectionSpec
from p4r.collections.naming import (
    CORE_KINDS,
    DEFAULT_KINDS,
    ID_SCHEME,
    KINDS,
    alias_name,
    collection_name,
    interaction_key,
    item_key,
    parse_collection_name,
    persona_key,
    point_id,
    profile_key,
    summary_key,
)
from p4r.datasets.events import EventLog
from p4r.datasets.models import Dataset, Interaction
from p4r.encoder.cache import EmbeddingCache, encode_cached, text_hash
from p4r.encoder.fingerprint import Fingerprint
from p4r.encoder.profile import user_vector
from p4r.encoder.templates import interaction_text, persona_text, summary_text
from p4r.errors import ConfigError, DamagedStoreError, InputError, NotIndexedError, P4RError
from p4r.migrations import SwapRecord, apply_migrations, begin_swap, finish_swap, reconcile
from p4r.migrations import swap_history as read_swap_history
from p4r.migrations.record import recorded_datasets
from p4r.settings import IndexSettings, VectorDatatype


class ShrinkError(InputError):
    """The new data would replace most of the live version (``allow_shrink`` to force)."""

KEYWORD_INDEXES = {
    "personas": ("item_id",),
    "summaries": ("item_id",),
    "interactions": ("user_id", "item_id"),
    "profiles": ("user_id",),
    "items": ("item_id",),
}
# Payload keys candidates are grouped by at query time (a store may keep a point-id map each).
GROUP_BY = {"personas": ("item_id",), "summaries": ("item_id",), "items": ("item_id",)}
TEXT_KINDS = ("personas", "summaries", "interactions")  # encoded from text
SHRINK_LIMIT = 0.5  # a new version may not lose more than half of the live one's ... w/o consent


class TextEncoder(Protocol):
    """What the pipeline needs from an encoder."""

    fingerprint: Fingerprint

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit float32 embeddings, one row per text."""
        ...


@dataclass(frozen=True)
class PlannedPoint:
    """One point to store: deterministic id, the text to embed (or the ids of the points its
    vector is derived from), and its payload."""

    id: int
    text: str
    payload: dict[str, Any]
    sources: tuple[int, ...] = ()


@dataclass(frozen=True)
class ProfileParams:
    """How a user's profile point averages the last ``last_n`` interactions (decay γ)."""

    gamma: float = 0.65
    last_n: int = 10


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


class _IdPlan:
    """Collects planned points of one kind and fails loudly on an id collision."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.points: dict[int, PlannedPoint] = {}
        self.keys: dict[int, tuple[object, ...]] = {}

    def add(self, key: tuple[object, ...], text: str, payload: dict[str, Any],
            sources: tuple[int, ...] = ()) -> int:
        pid = point_id(*key)
        known = self.keys.get(pid)
        if known is not None and known != key:
            raise ConfigError(f"point id collision in {self.kind}: {known!r} and {key!r} hash to "
                              f"{pid}; rename one of them")
        self.keys[pid] = key
        self.points[pid] = PlannedPoint(pid, text, payload, sources)  # the last record wins
        return pid


def plan_points(
    dataset: Dataset, profile: ProfileParams | None = None, *, maxsim: bool = False
) -> dict[str, list[PlannedPoint]]:
    """Every point of every kind the version holds, deduplicated by id (the last record wins);
    the MaxSim ``items`` kind only with ``maxsim``."""
    name = dataset.name
    profile = profile or ProfileParams()
    personas, items = _IdPlan("personas"), _IdPlan("items")
    for item_id, item_personas in dataset.personas.items():
        item = dataset.items.get(item_id)
        summary = item.summary if item else ""
        ids = tuple(personas.add(persona_key(name, item_id, p.persona_id),
                                 persona_text(p, summary), {
            "item_id": item_id, "persona_id": p.persona_id, "name": p.name,
            "description": p.description, "rationale": p.rationale,
        }) for p in item_personas)
        items.add(item_key(name, item_id), "", {"item_id": item_id}, tuple(dict.fromkeys(ids)))
    summaries = _IdPlan("summaries")
    for item_id, item in dataset.items.items():
        if item.summary.strip():
            summaries.add(summary_key(name, item_id), summary_text(item), {
                "item_id": item_id, "title": item.title, "summary": item.summary})
    interactions, profiles = _IdPlan("interactions"), _IdPlan("profiles")
    by_user: dict[str, dict[int, Interaction]] = {}
    for it in dataset.interactions:
        pid = interactions.add(interaction_key(name, it.user_id, it.item_id, it.timestamp),
                               interaction_text(it), {
                                   "user_id": it.user_id, "item_id": it.item_id,
                                   "ts": it.timestamp, "rating": it.rating})
        by_user.setdefault(it.user_id, {})[pid] = it
    for user_id, history in by_user.items():
        ordered = sorted(history.items(), key=lambda kv: (kv[1].timestamp, kv[1].item_id))
        recent = ordered[-profile.last_n:]
        profiles.add(profile_key(name, user_id), "", {
            "user_id": user_id, "count": len(ordered),
            "recent": [{"item_id": it.item_id, "ts": it.timestamp} for _, it in recent],
        }, tuple(pid for pid, _ in recent))
    plans = {"personas": personas, "summaries": summaries, "interactions": interactions,
             "profiles": profiles, "items": items}
    kinds = KINDS if maxsim else DEFAULT_KINDS
    return {kind: list(plans[kind].points.values()) for kind in kinds}


def plan_digest(plan: dict[str, list[PlannedPoint]], profile: ProfileParams | None = None,
                vector_datatype: VectorDatatype = "float32") -> str:
    """Hash of every id, text, payload and source, and of how vectors are stored: equal
    digests mean an identical index (float32 digests are those of versions built before the
    storage could be chosen)."""
    profile = profile or ProfileParams()
    storage = "" if vector_datatype == "float32" else f"{vector_datatype}\0"
    digest = hashlib.sha256(
        f"ids{ID_SCHEME}\0{profile.gamma}\0{profile.last_n}\0{storage}".encode())
    for kind in [k for k in KINDS if k in plan]:
        for point in sorted(plan[kind], key=lambda p: p.id):
            digest.update(f"{kind}\0{point.id}\0{text_hash(point.text)}\0{point.sources}\0"
                          .encode())
            digest.update(repr(sorted(point.payload.items())).encode())
    return digest.hexdigest()


def _batches(seq: Sequence[PlannedPoint], size: int) -> Iterable[Sequence[PlannedPoint]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def check_encoder_compatible(backend: Backend, dataset: str, fp: Fingerprint) -> None:
    """Refuse to upsert with an encoder that differs from the live version's."""
    live = catalog.live_version(backend, dataset)
    if live is None:
        return
    meta = catalog.version_metadata(backend, dataset, live)
    stored = Fingerprint.from_dict(meta["encoder"])
    if stored.dim != fp.dim:
        raise ConfigError(
            f"vector dimension mismatch: {collection_name(dataset, 'personas', live)} holds "
            f"{stored.dim}-d vectors from {stored.model}, but P4R_ENCODER__MODEL={fp.model} "
            f"makes {fp.dim}-d vectors; pass --reindex to build a new version with this encoder"
        )
    if not stored.accepts(fp):
        raise ConfigError(
            f"encoder fingerprint mismatch: {collection_name(dataset, 'personas', live)} was "
            f"built with {stored.short()}, the configured encoder is {fp.short()}; "
            "pass --reindex to build a new version with it"
        )


def _same_encoder(meta: dict[str, Any], fp: Fingerprint) -> bool:
    """Whether a stored version was built with ``fp``'s weights and length (the folder it was
    read from does not matter)."""
    stored = meta.get("encoder")
    return bool(stored) and Fingerprint.from_dict(stored).accepts(fp)


def _shape(counts: dict[str, int], users: int, items: int) -> dict[str, int]:
    return {"personas": counts.get("personas", 0), "items": items, "users": users}


def check_shrink(backend: Backend, dataset: str, new: dict[str, int]) -> None:
    """Refuse a version that loses most of the live one's personas, items or users."""
    live = catalog.live_version(backend, dataset)
    if live is None:
        return
    meta = catalog.version_metadata(backend, dataset, live)
    old = meta.get("shape") or {"personas": (meta.get("counts") or {}).get("personas", 0)}
    lost = [f"{key} {old[key]} → {new.get(key, 0)}" for key in ("personas", "items", "users")
            if old.get(key) and new.get(key, 0) < old[key] * SHRINK_LIMIT]
    if lost:
        raise ShrinkError(
            f"refusing to replace live version {live} of {dataset!r}: the new data loses most "
            f"of it ({', '.join(lost)}); check the input files, or allow it with allow_shrink")


def build_options(index: IndexSettings | None) -> dict[str, Any]:
    """What the index settings choose about a version's layout, as upsert_dataset arguments:
    every command that builds an index (upsert, the evaluations) builds the same one."""
    index = index or IndexSettings()
    return {"maxsim": index.maxsim, "vector_datatype": index.vector_datatype}


def upsert_dataset(
    dataset: Dataset,
    backend: Backend,
    encoder: TextEncoder,
    *,
    batch_size: int = 256,
    cache: EmbeddingCache | None = None,
    reindex: bool = False,
    progress: bool | None = None,
    layout: dict[str, int | None] | None = None,
    on_batch: Callable[[str, int], None] | None = None,
    profile: ProfileParams | None = None,
    allow_shrink: bool = False,
    extra_metadata: dict[str, Any] | None = None,
    lock_timeout: float = 0.0,
    maxsim: bool = False,
    vector_datatype: VectorDatatype = "float32",
) -> UpsertReport:
    """Build (or resume, or confirm) the index of ``dataset``; move aliases when complete.

    Args:
        dataset: validated dataset.
        backend: where the collections live.
        encoder: text encoder; its fingerprint is stored with the collections.
        batch_size: points per encode/upsert batch.
        cache: optional persistent embedding cache.
        reindex: allow an encoder different from the live version's (builds a new version).
        progress: show progress bars (None: only on a terminal).
        layout: server collection layout (shard_number, replication_factor, ...).
        on_batch: called after each stored batch with (kind, points so far); tests use it.
        profile: γ and n of the stored user profiles.
        allow_shrink: publish even if the new version loses most of the live one.
        extra_metadata: stored with the version (e.g. the event-log position it includes).
        lock_timeout: seconds to wait for another writer of the store.
        maxsim: also build the per-item MaxSim collection (served for top k when present).
        vector_datatype: how the engine stores vectors (float16 halves their memory).

    Returns:
        An :class:`UpsertReport`.
    """
    with backend.writer(f"p4r-index upsert --dataset {dataset.name}", lock_timeout):
        return _upsert_locked(dataset, backend, encoder, batch_size=batch_size, cache=cache,
                              reindex=reindex, progress=progress, layout=layout,
                              on_batch=on_batch, profile=profile or ProfileParams(),
                              allow_shrink=allow_shrink, extra_metadata=extra_metadata or {},
                              maxsim=maxsim, vector_datatype=vector_datatype)


def _upsert_locked(
    dataset: Dataset, backend: Backend, encoder: TextEncoder, *, batch_size: int,
    cache: EmbeddingCache | None, reindex: bool, progress: bool | None,
    layout: dict[str, int | None] | None, on_batch: Callable[[str, int], None] | None,
    profile: ProfileParams, allow_shrink: bool, extra_metadata: dict[str, Any], maxsim: bool,
    vector_datatype: VectorDatatype,
) -> UpsertReport:
    started = time.perf_counter()
    fp = encoder.fingerprint
    repaired = _repair_aliases(backend, dataset.name)
    apply_migrations(backend)  # llm-style: the store layout is brought up to date on open
    reconcile(backend, dataset.name)  # settle a swap a previous run crashed in
    plan = plan_points(dataset, profile, maxsim=maxsim)
    digest = plan_digest(plan, profile, vector_datatype)
    counts = {kind: len(plan[kind]) for kind in plan}
    group_sizes = Counter(str(p.payload["item_id"]) for p in plan["personas"])
    shape = _shape(counts, users=counts["profiles"], items=len(group_sizes))

    live = catalog.live_version(backend, dataset.name)
    problems = verify_version(backend, dataset.name, live) if live is not None else []
    if live is not None and not problems:
        if not reindex:
            check_encoder_compatible(backend, dataset.name, fp)
        meta = catalog.version_metadata(backend, dataset.name, live)
        if meta.get("digest") == digest and _same_encoder(meta, fp):
            return UpsertReport(dataset.name, live, "unchanged", counts, 0,
                                time.perf_counter() - started, repaired)
        if not allow_shrink:
            check_shrink(backend, dataset.name, shape)

    version, action = _pick_version(backend, dataset.name, live, digest, fp, set(plan))
    if version is None:
        version = max([*catalog.versions(backend, dataset.name), 0]) + 1
        metadata = {"dataset": dataset.name, "version": version, "state": "building",
                    "digest": digest, "encoder": fp.as_dict(), "counts": counts,
                    "shape": shape, "id_scheme": ID_SCHEME,
                    "profile": {"gamma": profile.gamma, "last_n": profile.last_n},
                    "max_group_size": max(group_sizes.values(), default=0),
                    "vector_datatype": vector_datatype,
                    "created_at": time.time(), **extra_metadata}
        for kind in plan:
            backend.create_collection(CollectionSpec(
                name=collection_name(dataset.name, kind, version), dim=fp.dim,
                keyword_indexes=KEYWORD_INDEXES[kind], metadata={**metadata, "kind": kind},
                multivector=kind == "items", group_by=GROUP_BY.get(kind, ()),
                datatype=vector_datatype, **(layout or {})))
    encoded = _store_points(dataset.name, version, plan, backend, encoder, cache, batch_size,
                            resume=action != "created", progress=progress, on_batch=on_batch)
    _finish_version(backend, dataset.name, version, counts)
    publish_version(backend, dataset.name, version, fp.as_dict(), counts)
    if problems:
        action = "rebuilt"
    return UpsertReport(dataset.name, version, action, counts, encoded,
                        time.perf_counter() - started, repaired + problems)


def _repair_aliases(backend: Backend, dataset: str) -> list[str]:
    """A damaged alias record is rebuilt from the swap history (the upsert then goes on)."""
    try:
        backend.get_aliases()
        return []
    except DamagedStoreError as exc:
        restored = catalog.restore_aliases(backend, recorded_datasets(backend))
        return [f"{exc} (restored {len(restored)} alias(es) from the swap history)"]


def _pick_version(
    backend: Backend, dataset: str, live: int | None, digest: str, fp: Fingerprint,
    planned: set[str],
) -> tuple[int | None, str]:
    """An unpublished version of exactly this build to resume or reuse; abandoned builds of
    other data are discarded on the way."""
    version, action = None, "created"
    for number, kinds in catalog.versions(backend, dataset).items():
        if number == live:
            continue
        try:
            meta = backend.get_metadata(kinds["personas"]) if "personas" in kinds else {}
        except DamagedStoreError:
            meta = {}  # unreadable: never reused, dropped below unless marked complete
        same = (set(kinds) >= planned and meta.get("digest") == digest
                and _same_encoder(meta, fp))
        if same and meta.get("state") in ("building", "complete") and version is None:
            # A complete one is left over from a crash before its swap, or is an older version
            # of exactly this build (a rollback): publish it instead of building a copy.
            version = number
            action = "resumed" if meta.get("state") == "building" else "reused"
        elif meta.get("state") != "complete":
            for name in kinds.values():  # an abandoned build of other data: discard it
                backend.drop_collection(name)
    return version, action


def _store_points(
    dataset: str, version: int, plan: dict[str, list[PlannedPoint]], backend: Backend,
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

    for kind in plan:
        name = collection_name(dataset, kind, version)
        source = collection_name(dataset, _SOURCE.get(kind, kind), version)
        points = plan[kind]
        with tqdm(total=len(points), desc=f"{dataset} {kind}", unit="pt",
                  disable=None if progress is None else not progress, leave=False) as bar:
            done = 0
            for batch in _batches(points, batch_size):
                present = backend.existing_ids(name, [p.id for p in batch]) if resume else set()
                todo = [p for p in batch if p.id not in present]
                if todo:
                    if kind in TEXT_KINDS:
                        vectors: Any = encode_cached([p.text for p in todo], fp, count_encode,
                                                     cache)
                    else:
                        vectors = _derived_vectors(backend, source, kind, todo)
                    backend.upsert(name, [p.id for p in todo], vectors, [p.payload for p in todo])
                done += len(batch)
                bar.update(len(batch))
                if on_batch:
                    on_batch(kind, done)
    return encoded


_SOURCE = {"items": "personas", "profiles": "interactions"}


def _derived_vectors(
    backend: Backend, source: str, kind: str, points: Sequence[PlannedPoint]
) -> Any:
    """Vectors computed from stored ones: an item's persona matrix (MaxSim), or a user's decayed
    profile over the last n interactions (oldest first in ``sources``)."""
    wanted = list(dict.fromkeys(pid for p in points for pid in p.sources))
    stored = backend.retrieve_vectors(source, wanted)
    missing = [pid for pid in wanted if pid not in stored]
    if missing:
        raise ConfigError(f"{source} lacks {len(missing)} point(s) {kind} are built from; "
                          "re-run the upsert to resume")
    if kind == "items":
        return [np.stack([stored[pid] for pid in p.sources]) for p in points]
    gamma, last_n = _profile_of(backend, source)
    return np.stack([user_vector(np.stack([stored[pid] for pid in p.sources]), gamma=gamma,
                                 last_n=last_n) for p in points])


def _profile_of(backend: Backend, collection: str) -> tuple[float, int]:
    meta = backend.get_metadata(collection).get("profile") or {}
    return float(meta.get("gamma", 0.65)), int(meta.get("last_n", 10))


def _finish_version(backend: Backend, dataset: str, version: int, counts: dict[str, int]) -> None:
    """Check every count, seal each collection for sharing, and mark the version complete."""
    for kind in counts:
        name = collection_name(dataset, kind, version)
        stored = backend.count(name)
        if stored != counts[kind]:
            raise ConfigError(f"{name} holds {stored} points, expected {counts[kind]}; "
                              "re-run the upsert to resume")
    for kind in counts:
        backend.seal(collection_name(dataset, kind, version))
    for kind in counts:
        backend.update_metadata(collection_name(dataset, kind, version),
                                {"state": "complete", "completed_at": time.time()})


def verify_version(backend: Backend, dataset: str, version: int) -> list[str]:
    """What is wrong with a stored version (empty when it is whole): every collection opens,
    holds its recorded count and its payload indexes, under one encoder fingerprint."""
    problems: list[str] = []
    kinds = catalog.versions(backend, dataset).get(version, {})
    try:
        meta = catalog.version_metadata(backend, dataset, version)
    except P4RError as exc:
        return [str(exc)]
    expected = dict(meta.get("counts") or {})
    for kind in [k for k in KINDS if k in expected or k in CORE_KINDS]:
        name = kinds.get(kind)
        if name is None:
            problems.append(f"{collection_name(dataset, kind, version)} is missing")
            continue
        try:
            kmeta = backend.get_metadata(name)
            stored = backend.count(name)
            indexes = backend.payload_indexes(name)
            problems += backend.check_collection(name)
        except P4RError as exc:
            problems.append(str(exc))
            continue
        if kind in expected and stored != int(expected[kind]):
            problems.append(f"{name} holds {stored} points, {expected[kind]} were recorded")
        lacking = set(KEYWORD_INDEXES[kind]) - indexes if indexes is not None else set()
        if lacking:
            problems.append(f"{name} lacks payload index(es) {', '.join(sorted(lacking))}")
        if kmeta.get("encoder") != meta.get("encoder"):
            problems.append(f"{name} has another encoder fingerprint than its version")
        if kmeta.get("state") != "complete":
            problems.append(f"{name} is in state {kmeta.get('state')!r}, not complete")
    return problems


def check_dataset(backend: Backend, dataset: str, version: int | None = None) -> dict[str, Any]:
    """Verify a version (default: the live one) and the aliases that point at it."""
    aliases = backend.get_aliases()
    live = catalog.live_version(backend, dataset)
    target = version if version is not None else live
    if target is None:
        raise NotIndexedError(f"dataset {dataset!r} is not indexed in {backend.describe()} "
                              f"(run: p4r-index upsert --dataset {dataset})")
    problems = verify_version(backend, dataset, target)
    if target == live:
        for kind in KINDS:
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


def swap_reason(
    backend: Backend, dataset: str, from_version: int | None, encoder: dict[str, Any]
) -> str:
    """Why the aliases move: ``created`` (first version), ``reindex`` (new encoder), ``update``."""
    if from_version is None:
        return "created"
    try:
        previous = catalog.version_metadata(backend, dataset, from_version).get("encoder")
    except P4RError:
        return "repair"  # the version it replaces is damaged
    same = previous is not None and Fingerprint.from_dict(previous) == Fingerprint.from_dict(
        encoder)
    return "update" if same else "reindex"


def publish_version(
    backend: Backend, dataset: str, version: int, encoder: dict[str, Any], counts: dict[str, int]
) -> SwapRecord:
    """Move the aliases to a complete ``version``, recorded pending before and applied after.

    A crash between the steps leaves a pending entry that the next upsert (or
    ``p4r-index migrate``) settles from where the aliases actually point.
    """
    live = catalog.live_version(backend, dataset)
    entry = begin_swap(backend, SwapRecord(
        dataset=dataset, from_version=live, to_version=version, encoder=encoder,
        counts=dict(counts), reason=swap_reason(backend, dataset, live, encoder)))
    catalog.swap_aliases(backend, dataset, version)
    return finish_swap(backend, entry)


def dataset_status(backend: Backend, dataset: str, *, tolerate: bool = False) -> dict[str, Any]:
    """Counts and identity of the live index of ``dataset`` (NotFoundError if none).

    With ``tolerate`` (a damaged version), a count the engine cannot give is None.
    """

    def counted(fn: Callable[..., int], *args: str) -> int | None:
        try:
            return fn(*args)
        except P4RError:
            if tolerate:
                return None
            raise

    personas = catalog.live_collection(backend, dataset, "personas")
    summaries = catalog.live_collection(backend, dataset, "summaries")
    interactions = catalog.live_collection(backend, dataset, "interactions")
    meta = backend.get_metadata(personas)
    profiles = backend.get_aliases().get(alias_name(dataset, "profiles"))
    return {
        "dataset": dataset,
        "backend": backend.kind,
        "profiles": counted(backend.count, profiles) if profiles else None,
        "personas": counted(backend.count, personas),
        "items": counted(backend.count_distinct, personas, "item_id"),
        "summaries": counted(backend.count, summaries),
        "interactions": counted(backend.count, interactions),
        "users": counted(backend.count_distinct, interactions, "user_id"),
        "collection": personas,
        "alias": alias_name(dataset, "personas"),
        "version": meta.get("version"),
        "encoder": meta.get("encoder"),
        "versions": {
            str(number): backend.get_metadata(kinds["personas"]).get("state", "unknown")
            for number, kinds in catalog.versions(backend, dataset).items() if "personas" in kinds
        },
        "migrations": [r.as_dict() for r in read_swap_history(backend, dataset)],
    }


def drop_dataset(backend: Backend, dataset: str) -> list[str]:
    """Remove the aliases first (queries stop at once), then every version's collections.

    The swap history is kept (it is an audit log) and gets a ``dropped`` entry.
    """
    apply_migrations(backend)
    live = catalog.live_version(backend, dataset)
    entry = None
    if live is not None:
        entry = begin_swap(backend, SwapRecord(dataset=dataset, from_version=live,
                                               to_version=None, reason="dropped"))
    with backend.writer(f"p4r-index drop --dataset {dataset}"):
        backend.set_aliases({alias_name(dataset, k): None for k in KINDS})
    if entry is not None:
        finish_swap(backend, entry)
    dropped = []
    for kinds in catalog.versions(backend, dataset).values():
        for name in kinds.values():
            backend.drop_collection(name)
            dropped.append(name)
    return dropped


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
    for number, kinds in stored.items():
        if number == live:
            continue
        meta = backend.get_metadata(kinds["personas"]) if "personas" in kinds else {}
        state = str(meta.get("state", "broken"))
        whole = set(kinds) >= set(CORE_KINDS)
        if state == "complete" and whole:
            complete.append(number)
            continue
        state = state if whole else "broken"
        doomed.append(PrunedVersion(number, state, _drop_order(kinds)))
    # Without a live version nothing is protected by the alias, so every complete one is kept.
    extra = keep - 1 if live is not None else len(complete)
    kept = set(sorted(complete, reverse=True)[:extra])
    for number in complete:
        if number not in kept:
            doomed.append(PrunedVersion(number, "complete", _drop_order(stored[number])))
    return sorted(doomed, key=lambda v: v.version)


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
    for doomed in prune_plan(backend, dataset, keep):
        if catalog.live_version(backend, dataset) == doomed.version:
            continue  # the alias moved to it since the plan was made: it is live now
        for name in doomed.collections:
            backend.drop_collection(name)
        removed.append(doomed)
    return removed
