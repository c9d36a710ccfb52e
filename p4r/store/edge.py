"""Embedded backend on Qdrant Edge: one in-process shard per collection under ``root``.

Layout: ``<root>/<collection>/shard/`` (Edge's files), ``<root>/<collection>/meta.json`` (p4r
metadata), ``<root>/aliases.json`` (alias record) and ``<root>/records.json`` (swap history and
applied migrations); JSON files are replaced atomically, so readers see old or new.

Concurrency: shards are created without a write-ahead log, so any number of processes can open
them; a version is written only while no alias points at it, then sealed (optimised and its
files settled) before it is published, and never written again. Writers (builds, alias moves,
records) are serialised by the lock in ``<root>/.writer.lock``, which names its holder.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import qdrant_edge as qe

from p4r.encoder.cache import fingerprint_key
from p4r.encoder.fingerprint import Fingerprint
from p4r.errors import (
    BackendError,
    ConfigError,
    DamagedStoreError,
    NotFoundError,
    P4RError,
    StorageFullError,
    first_line,
)
from p4r.settings import ProfileParams, Settings
from p4r.store.base import (
    Backend,
    CollectionSpec,
    GroupAnswer,
    PointId,
    Record,
    to_record,
)
from p4r.store.deltas import OverlayDelta
from p4r.store.edge_files import read_aliases, read_json, read_records, write_json_atomic
from p4r.store.edge_groups import (
    GroupMap,
    decode,
    groups_file,
    query_request,
    read_groups,
    write_groups,
)
from p4r.store.edge_payloads import PayloadTable, payloads_file, write_payload_table
from p4r.store.edge_users import EdgeUserStore, users_path
from p4r.store.edge_vectors import VectorTable, vectors_file, write_vector_table
from p4r.store.lock import WriterLock
from p4r.store.naming import parse_collection_name
from p4r.store.registry import register_backend
from p4r.store.users import UserStore

_PAGE = 1024
_RECORDS = "records.json"


class _TableKind(NamedTuple):
    """A file sealing derives from a collection so serving reads it by mmap instead of the
    engine: the metadata key recording it (file, count, checksum), its name and its rows' in
    messages, the collection kinds that get one, where it lives, and how it is opened (and
    checked)."""

    key: str
    label: str
    rows: str  # what its rows are, in messages
    kinds: tuple[str, ...]
    path: Callable[[Path], Path]
    opener: Callable[[Path, str, dict[str, Any]], PayloadTable | VectorTable]


# Explanations: the payloads of the kinds responses show.
_PAYLOADS = _TableKind("payload_table", "payload table", "payloads", ("personas",),
                       payloads_file, PayloadTable)
# "Because": the vectors of the kinds whose winners it compares.
_VECTORS = _TableKind("vector_table", "vector table", "vectors", ("personas", "summaries"),
                      vectors_file, VectorTable)
_TABLES = (_PAYLOADS, _VECTORS)
_REHEARSALS = 8  # small requests answered when a sealed collection opens
_TOUCH_GROUPS = 2048  # groups per query when a sealed collection's vectors are touched
_EXACT = qe.SearchParams(exact=True)
LEGACY_RECORD = "p4r_migrations"  # the record lived in an Edge shard before records.json


class EdgeBackend(Backend):
    """Collections as Qdrant Edge shards in a folder; aliases and records in JSON files."""

    def __init__(self, root: Path, *, search_threads: int | None = 1) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise BackendError(f"the edge store {self.root} is a file, not a folder "
                               "(check P4R_DATA_DIR)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.search_threads = search_threads
        self._shards: dict[str, qe.EdgeShard] = {}
        self._groups: dict[tuple[str, str], GroupMap] = {}
        # Collection → its payload table, or None where it has none (read from the engine).
        # (table kind's key, collection) → its table, None when sealing wrote none.
        self._tables: dict[tuple[str, str], Any] = {}
        # Collection → group key → {point id: group} of every point this process upserted
        # since creating it: sealing writes the groups file from it without a payload scan.
        self._seen: dict[str, dict[str, dict[PointId, str]]] = {}
        self._lock = threading.RLock()
        self._writer = WriterLock(self.root / ".writer.lock")
        self._user_stores: dict[tuple[str, str, ProfileParams], UserStore] = {}
        self._written: set[str] = set()  # shards this process created or wrote
        self._copies: dict[str, Path] = {}  # private copies of a read-only store's shards

    def describe(self) -> str:
        return f"edge store {self.root}"

    def writer(self, what: str, timeout: float = 0.0) -> AbstractContextManager[None]:
        return self._writer.hold(what, timeout)

    def _writing(self, what: str) -> AbstractContextManager[None]:
        """Single mutations take the lock too (re-entrant inside a whole-operation hold)."""
        return self._writer.hold(what, 0.0)

    # -- collections -------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return self.root / name

    def _config(self, spec: CollectionSpec) -> qe.EdgeConfig:
        multi = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim) if spec.multivector \
            else None
        # The MaxSim collection repeats every persona vector: keep it on disk and let the page
        # cache hold what top-k queries touch, instead of a second full copy in memory.
        vectors = qe.EdgeVectorParams(size=spec.dim, distance=qe.Distance.Cosine,
                                      multivector_config=multi,
                                      memory=qe.Memory.Cold if spec.multivector else None,
                                      datatype=qe.VectorStorageDatatype.Float16
                                      if spec.datatype == "float16" else None)
        # No WAL: several processes may open the shard. No HNSW graph: p4r's queries are
        # filtered to a few candidates and always exact. Payload cold (mapped, not pre-read):
        # explanations come from the payload table written at sealing, so a server does not
        # map payloads at all. Indexing threshold 1 KB: sealing's optimize() turns even a
        # small collection into an immutable segment sized to its data; left appendable, its
        # vectors sit in a 32 MB chunk held in memory (measured: 31 MB of RSS for 1,000
        # points). Edge optimises only when asked, so the build itself is unchanged.
        return qe.EdgeConfig(vectors=vectors, max_search_threads=self.search_threads,
                             payload_memory=qe.Memory.Cold, wal_enabled=False,
                             hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100,
                                                            full_scan_threshold=10_000),
                             optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1))

    def _shard(self, name: str) -> qe.EdgeShard:
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        with self._lock:
            shard = self._shards.get(name)
            if shard is None:
                if not self.collection_exists(name):
                    raise NotFoundError(f"collection {name!r} does not exist in {self.describe()}")
                shard = self._load(name, self._dir(name) / "shard")
                self._shards[name] = shard
                self._prepare(name)
            return shard

    def _prepare(self, name: str) -> None:
        """Read what queries of a sealed collection need when its shard opens, which a
        serving process does when it binds a version, so the first requests after a start or
        a reload pay no file reads: its groups files, its payload table, and every vector
        once through the engine (below). Best effort: damage is left to the reads that report
        it (a request, ``check``), so a damaged collection can still be counted, checked and
        dropped."""
        try:
            meta = self.get_metadata(name)
            sealed = [key for key in meta.get("group_by") or []
                      if groups_file(self._dir(name), key).exists()]
            for key in sealed:
                self._group_map(name, key)
            for kind in _TABLES:
                self._table(kind, name)
            dim = int(meta.get("dim") or 1)
            if sealed and not meta.get("multivector"):
                self._touch_vectors(name, sealed[0], dim)
            if sealed:
                self._rehearse(name, sealed[0], dim)
        except P4RError:
            pass

    def _touch_vectors(self, name: str, key: str, dim: int) -> None:
        """Score every point once through the filtered path requests take, a slice of groups
        per query. Until each point has been scored that way, filtered queries are slow: the
        first request after a load took ~9-11 ms, the next hundred 1.4 ms and the following
        ones 0.7 ms, against 0.12 ms once every point was touched (measured at 125K
        personas, page cache warm). One unfiltered scan does it in a third of the CPU, but
        Edge serves it from a second mapping of the vector file, so every process would hold
        the vectors twice (RSS +183 MB at 125K, measured). Each slice holds the GIL for a few
        milliseconds (the engine keeps it for a whole call); ~0.1-0.2 s of CPU at 125K in all.
        The MaxSim collection (vectors kept cold on purpose) is not touched."""
        shard = self._shards[name]
        groups = list(self._group_map(name, key).members)
        probe = [1.0] * dim
        with _engine_errors("read the vectors of", name):
            for start in range(0, len(groups), _TOUCH_GROUPS):
                shard.query(qe.QueryRequest(
                    limit=1, query=qe.Query.Nearest(probe), with_payload=False,
                    with_vector=False, params=_EXACT, filter=qe.Filter(must=[
                        qe.FieldCondition(key=key, match=qe.MatchAny(
                            groups[start:start + _TOUCH_GROUPS]))])))

    def _rehearse(self, name: str, key: str, dim: int) -> None:
        """Answer a few small requests the way serving does (plans, engine query, decoding,
        payload reads): the first real request after a bind otherwise runs its code paths
        for the first time, right after the bind streamed the version through the caches."""
        groups = list(self._group_map(name, key).members)
        rng = np.random.default_rng(0)
        for _ in range(_REHEARSALS):
            picked = [groups[i] for i in rng.choice(len(groups), min(20, len(groups)),
                                                    replace=False)] if groups else []
            vector = rng.standard_normal((1, dim)).astype(np.float32)
            answer = self.best_per_group(name, vector, [picked], key)[0]
            if self._tables.get((_PAYLOADS.key, name)) is not None:
                self.retrieve_payloads(name, [hit.point_id for hit in answer.hits])
        self._group_map(name, key).forget_plans()

    def _load(self, name: str, folder: Path) -> qe.EdgeShard:
        """Open a stored shard. Qdrant Edge opens a segment's files for writing even to read
        them, so a store this process cannot write (a read-only mount) is served from a
        private copy of the shard, and a full disk is told apart from damage."""
        try:
            # No config: loading with one rewrites it on disk.
            return qe.EdgeShard.load(str(folder))
        except Exception as exc:
            text = str(exc)
            if "os error 28" in text or "No space left" in text:
                raise StorageFullError(folder, "cannot open the shard to read it") from None
            if ("os error 30" in text or "Read-only file system" in text
                    or "os error 13" in text):
                return self._load_copy(name, folder)
            raise DamagedStoreError(f"cannot open edge shard {folder}: {first_line(exc)}; "
                                    f"{_recovery(name)}") from None

    def _load_copy(self, name: str, folder: Path) -> qe.EdgeShard:
        """Serve a read-only store's shard from a private copy (removed at close)."""
        copy = Path(tempfile.mkdtemp(prefix=f"p4r-{name}-")) / "shard"
        try:
            shutil.copytree(folder, copy)
            shard = qe.EdgeShard.load(str(copy))
        except Exception as exc:
            shutil.rmtree(copy.parent, ignore_errors=True)
            raise DamagedStoreError(f"cannot open edge shard {folder} (read-only: served from a "
                                    f"copy): {first_line(exc)}; {_recovery(name)}") from None
        self._copies[name] = copy.parent
        return shard

    def list_collections(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "meta.json").exists())

    def collection_exists(self, name: str) -> bool:
        return (self._dir(name) / "meta.json").exists()

    def create_collection(self, spec: CollectionSpec) -> None:
        """Create a collection; one of the same name is never dropped (an error instead). A
        folder without ``meta.json`` is the debris of a create that crashed, and is cleared."""
        with self._writing(f"create {spec.name}"), self._lock:
            if self.collection_exists(spec.name):
                raise BackendError(f"collection {spec.name} already exists in "
                                   f"{self.describe()}; p4r never replaces a collection")
            self._close_shard(spec.name)
            folder = self._dir(spec.name)
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            try:
                shard = qe.EdgeShard.create(str(folder / "shard"), self._config(spec))
                for key in spec.keyword_indexes:
                    schema = qe.KeywordIndexParams(is_tenant=True) if spec.tenant(key) \
                        else qe.PayloadSchemaType.Keyword
                    shard.update(qe.UpdateOperation.create_field_index(key, schema))
                shard.flush()
            except Exception as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise BackendError(f"cannot create edge shard {folder}: {exc}") from exc
            self._shards[spec.name] = shard
            self._written.add(spec.name)
            self._seen[spec.name] = {key: {} for key in spec.group_by}
            meta = {**spec.metadata, **_engine_metadata(spec)}
            write_json_atomic(folder / "meta.json", meta)

    def _close_shard(self, name: str) -> None:
        shard = self._shards.pop(name, None)
        if shard is not None:
            if name in self._written:  # a shard this process only read is never flushed
                shard.flush()
            shard.close()
        self._written.discard(name)
        copy = self._copies.pop(name, None)
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)
        self._forget_groups(name)

    def free_bytes(self) -> int | None:
        return shutil.disk_usage(self.root).free

    def release(self, names: Sequence[str]) -> None:
        """Close the shards of collections no longer served (a version a server left), so
        their files are let go and a prune frees their space."""
        with self._lock:
            for name in names:
                self._close_shard(name)

    def drop_collection(self, name: str) -> None:
        with self._writing(f"drop {name}"), self._lock:
            self._close_shard(name)
            self._seen.pop(name, None)
            folder = self._dir(name)
            if folder.exists():
                # Remove meta first so a crash mid-delete never leaves a "live" half folder.
                (folder / "meta.json").unlink(missing_ok=True)
                shutil.rmtree(folder)

    def write_live_profiles(
        self, name: str,
        points: Callable[[], tuple[Sequence[PointId], np.ndarray, Sequence[dict[str, Any]]]],
    ) -> None:
        """Published shards are never written: live events reach every process through the
        dataset's shared event log instead."""

    def seal(self, name: str) -> None:
        """Optimise a complete collection and settle its files before anyone else opens it.

        The first load after a writer closes a shard rewrites a few bookkeeping files; doing
        that here, under the writer lock, means readers of a published version never write.
        """
        with self._writing(f"seal {name}"), self._lock:
            shard = self._shard(name)
            self._written.add(name)
            self._write_groups(name)
            self._write_table(_PAYLOADS, name, lambda path, _: write_payload_table(
                path, list(self._pages(name, "payloads"))))
            self._write_table(_VECTORS, name, lambda path, meta: write_vector_table(
                path, int(meta["dim"]), self._pages(name, "vectors")))
            try:
                shard.flush()
                shard.optimize()
                shard.flush()
                self._close_shard(name)
                qe.EdgeShard.load(str(self._dir(name) / "shard")).close()
            except Exception as exc:
                raise BackendError(f"cannot seal edge shard {self._dir(name)}: {exc}") from exc

    def _write_groups(self, name: str) -> None:
        """Write each group key's groups file, so readers never scan payloads for it: from the
        points this process upserted when they are all of them, else from one scan."""
        count = self.count(name)
        for key in self.get_metadata(name).get("group_by") or []:
            seen = self._seen.get(name, {}).get(key)
            if seen is None or len(seen) != count:  # a build resumed by another process
                members = self._scan_groups(name, key)
            else:
                members = {}
                for pid, group in seen.items():
                    members.setdefault(group, []).append(pid)
            write_groups(groups_file(self._dir(name), key), members)
        self._seen.pop(name, None)

    def _write_table(self, kind: _TableKind, name: str,
                     write: Callable[[Path, dict[str, Any]], dict[str, Any]]) -> None:
        """Write ``kind``'s table of a collection of the kinds that get one (``write(path,
        metadata)``) and record it in the collection's metadata, where readers look for it.
        Stores of id scheme 1 (uuid ids) keep none: their reads stay engine reads."""
        meta = self.get_metadata(name)
        if meta.get("kind") not in kind.kinds:
            return
        path = kind.path(self._dir(name))
        try:
            record: dict[str, Any] | None = write(path, meta)
        except ValueError:  # uuid ids, or an engine that scrolls out of id order
            path.unlink(missing_ok=True)
            record = None
        with self._lock:
            self._tables.pop((kind.key, name), None)
        meta[kind.key] = record
        write_json_atomic(self._dir(name) / "meta.json", meta)

    def _pages(self, name: str, what: str) -> Iterator[Any]:
        """Every point of a collection in id order, in pages 8× those of :meth:`scroll` (each
        page restarts from an id, and at 1,024 a 125K scan took 3.0 s against 0.96 s,
        measured): ``payloads``, (raw id, payload) per point; ``vectors``, (raw ids,
        vectors) per page."""
        shard = self._shard(name)
        offset: Any = None
        vectors = what == "vectors"
        while True:
            with _engine_errors(f"read the {what} of", name):
                records, offset = shard.scroll(qe.ScrollRequest(
                    offset=offset, limit=8 * _PAGE, with_payload=not vectors,
                    with_vector=vectors))
            if vectors:
                yield [rec.id for rec in records], [_plain_vector(rec.vector) for rec in records]
            else:
                yield from ((rec.id, rec.payload or {}) for rec in records)
            if offset is None:
                return

    def _table(self, kind: _TableKind, name: str) -> Any:
        """The collection's ``kind`` table, opened (and checked) once per process; None when
        sealing wrote none (an older version, uuid ids, another kind)."""
        table = self._tables.get((kind.key, name), _UNREAD)
        if table is not _UNREAD:
            return table
        with self._lock:
            table = self._tables.get((kind.key, name), _UNREAD)
            if table is _UNREAD:
                recorded = self.get_metadata(name).get(kind.key)
                table = self._open_table(kind, name, recorded) if recorded else None
                self._tables[(kind.key, name)] = table
            return table

    def _open_table(self, kind: _TableKind, name: str,
                    recorded: Any) -> PayloadTable | VectorTable:
        path = kind.path(self._dir(name))
        if not isinstance(recorded, dict) or recorded.get("file") != path.name:
            raise DamagedStoreError(f"{self._dir(name) / 'meta.json'} (collection metadata) "
                                    f"records a {kind.label} p4r did not write; "
                                    f"{_recovery(name)}")
        if not path.exists():
            raise DamagedStoreError(f"{path} ({kind.label}) is missing; {_recovery(name)}")
        return kind.opener(path, _recovery(name), recorded)

    def check_collection(self, name: str) -> list[str]:
        problems = []
        count = self.count(name)
        meta = self.get_metadata(name)
        for kind in _TABLES:
            if not meta.get(kind.key):
                continue
            try:
                table = self._open_table(kind, name, meta[kind.key])
            except DamagedStoreError as exc:
                problems.append(str(exc).split("; ")[0])
            else:
                if table.count != count:
                    problems.append(f"{table.path} ({kind.label}) holds {table.count} "
                                    f"{kind.rows}, {name} holds {count} points")
                table.close()
        for key in self.get_metadata(name).get("group_by") or []:
            path = groups_file(self._dir(name), key)
            if not path.exists():
                problems.append(f"{path} (point groups) is missing")
                continue
            try:
                grouped = sum(len(ids) for ids in read_groups(path, "").values())
            except DamagedStoreError as exc:
                problems.append(str(exc).rstrip("; "))
                continue
            if grouped != count:
                problems.append(f"{path} groups {grouped} points, {name} holds {count}")
        return problems

    def get_metadata(self, name: str) -> dict[str, Any]:
        path = self._dir(name) / "meta.json"
        if not path.exists():
            raise NotFoundError(f"collection {name!r} does not exist in {self.describe()}")
        meta = read_json(path, "collection metadata", _recovery(name))
        if not isinstance(meta, dict):
            raise DamagedStoreError(f"{path} (collection metadata) is damaged: not an object; "
                                    f"{_recovery(name)}")
        return meta

    def update_metadata(self, name: str, updates: dict[str, Any]) -> None:
        with self._writing(f"update {name}"), self._lock:
            meta = self.get_metadata(name)
            meta.update(updates)
            write_json_atomic(self._dir(name) / "meta.json", meta)

    def vector_size(self, name: str) -> int:
        return int(self.get_metadata(name)["dim"])

    # -- points --------------------------------------------------------------------------------
    def upsert(
        self, name: str, ids: Sequence[PointId], vectors: np.ndarray | Sequence[Any],
        payloads: Sequence[dict[str, Any]],
    ) -> None:
        with self._writing(f"upsert into {name}"):
            shard = self._shard(name)
            self._written.add(name)
            rows = _rows(vectors)
            points = [qe.Point(pid, row, payload) for pid, row, payload in
                      zip(ids, rows, payloads, strict=True)]
            for key, seen in self._seen.get(name, {}).items():
                seen.update((pid, str(p.get(key))) for pid, p in zip(ids, payloads, strict=True))
            try:
                # No flush per batch: a crash loses only unflushed points, which a resumed
                # build finds missing and writes again; seal() and close() flush.
                shard.update(qe.UpdateOperation.upsert_points(points))
            except Exception as exc:
                raise BackendError(f"upsert into {name} failed: {exc}") from exc
            self._forget_groups(name)

    def existing_ids(self, name: str, ids: Sequence[PointId]) -> set[PointId]:
        if not ids:
            return set()
        found = self._shard(name).retrieve(list(ids), False, False)
        return {_pid(r.id) for r in found}

    def count(self, name: str) -> int:
        shard = self._shard(name)
        with _engine_errors("count", name):
            return int(shard.count(qe.CountRequest(exact=True)))

    def count_distinct(self, name: str, key: str) -> int:
        limit = max(self.count(name), 1)
        shard = self._shard(name)
        with _engine_errors(f"count distinct {key} of", name):
            return len(shard.facet(qe.FacetRequest(key=key, limit=limit, exact=True)).hits)

    def payload_indexes(self, name: str) -> set[str]:
        shard = self._shard(name)
        with _engine_errors("read the payload indexes of", name):
            return set(shard.info().payload_schema)

    def scroll(
        self,
        name: str,
        *,
        match: tuple[str, str | Sequence[str]] | None = None,
        with_vectors: bool = False,
        payload_keys: Sequence[str] | None = None,
    ) -> Iterator[Record]:
        shard = self._shard(name)
        flt = _match_filter(*match) if match else None
        with_payload: Any = list(payload_keys) if payload_keys is not None else True
        offset: Any = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=_PAGE, filter=flt,
                                 with_payload=with_payload, with_vector=with_vectors)
            )
            for rec in records:
                yield to_record(rec, with_vectors)
            if offset is None:
                return

    def retrieve(
        self, name: str, ids: Sequence[PointId], *, with_vectors: bool = False,
        with_payload: bool = True,
    ) -> list[Record]:
        if not ids:
            return []
        if with_vectors and not with_payload and self._table(_VECTORS, name) is not None:
            return [Record(id=pid, vector=vector, payload={})  # the table, as retrieve_vectors
                    for pid, vector in self.retrieve_vectors(name, ids).items()]
        found = self._shard(name).retrieve(list(ids), with_payload, with_vectors)
        return [to_record(r, with_vectors) for r in found]

    def retrieve_payloads(self, name: str, ids: Sequence[PointId]) -> dict[PointId, dict[str, Any]]:
        if not ids:
            return {}
        table = self._table(_PAYLOADS, name)
        if table is not None:  # sealed with a payload table: an mmap read, no engine call
            return table.get_many(ids)  # type: ignore[no-any-return]
        # Raw engine records and ids (as hits carry them): no conversions on the serving path.
        return {r.id: r.payload for r in self._shard(name).retrieve(list(ids), True, False)}

    def retrieve_vectors(self, name: str, ids: Sequence[PointId]) -> dict[PointId, np.ndarray]:
        if not ids:
            return {}
        table = self._table(_VECTORS, name)
        if table is not None:
            return {_pid(pid): vector for pid, vector in table.get_many(ids).items()}
        return {_pid(r.id): np.asarray(r.vector, dtype=np.float32)
                for r in self._shard(name).retrieve(list(ids), False, True)}

    # -- search --------------------------------------------------------------------------------
    def _group_map(self, name: str, key: str) -> GroupMap:
        """point id → group and points per group, read once per collection version.

        Resolving hits through this map keeps payload reads off the hot path: Edge spends most
        of a small query materialising payload, so queries ask for ids and scores only.
        """
        cached = self._groups.get((name, key))
        if cached is None:
            path = groups_file(self._dir(name), key)
            meta = self.get_metadata(name)
            if path.exists():  # written at sealing: no payload is read
                members = read_groups(path, _recovery(name))
            elif key in (meta.get("group_by") or []) and name not in self._seen:
                # Sealing writes it; only a collection this process is still building lacks it.
                raise DamagedStoreError(f"{path} (point groups) is missing; {_recovery(name)}")
            else:  # a version sealed before groups files, or a key without one: scan once
                members = {group: tuple(ids)
                           for group, ids in self._scan_groups(name, key).items()}
            cached = GroupMap(members, bool(meta.get("multivector")))
            self._groups[(name, key)] = cached
        return cached

    def _scan_groups(self, name: str, key: str) -> dict[str, list[PointId]]:
        """Group → point ids read from every point's payload (one scan of the collection)."""
        members: dict[str, list[PointId]] = {}
        for rec in self.scroll(name, payload_keys=[key]):
            members.setdefault(str((rec.payload or {}).get(key)), []).append(_pid(rec.id))
        return members

    def _forget_groups(self, name: str) -> None:
        """Forget what this process read of a collection's files (groups, payload table)."""
        with self._lock:  # a serving thread may be filling the cache at the same moment
            for cache_key in [k for k in list(self._groups) if k[0] == name]:
                self._groups.pop(cache_key, None)
            for kind in _TABLES:
                table = self._tables.pop((kind.key, name), None)
                if table is not None:
                    table.close()

    def best_per_group(
        self, name: str, vectors: np.ndarray, groups: Sequence[Sequence[str]], key: str = "item_id",
        *, limits: Sequence[int | None] | None = None,
    ) -> list[GroupAnswer]:
        shard = self._shard(name)
        index = self._group_map(name, key)
        plans = [index.plan(values, key, limit)
                 for values, limit in zip(groups, limits or [None] * len(groups), strict=True)]
        multi = index.multivector
        live = [query_request(plan, vector, multi)
                for plan, vector in zip(plans, np.asarray(vectors, dtype=np.float32),
                                        strict=True) if plan.filter is not None]
        try:
            if len(live) == 1:
                answers = [shard.query(live[0])]
            elif live:
                answers = shard.query_batch(qe.QueryBatchRequest(live))
            else:
                answers = []
        except Exception as exc:
            raise BackendError(f"query on {name} failed: {exc}") from exc
        return decode(answers, plans)

    def group_sizes(self, name: str, key: str = "item_id") -> dict[str, int]:
        return {group: len(ids) for group, ids in self._group_map(name, key).members.items()}

    def warm_up_groups(self, name: str, limit: int, key: str = "item_id") -> list[str]:
        """``limit`` groups spread evenly over the collection's group map (read at open):
        requests rank items from all over the store, and a warm-up over the first groups
        left a reload's first request slower (see ``Reranker._warm_up``)."""
        groups = list(self._group_map(name, key).members)
        if len(groups) <= limit:
            return groups if limit > 0 else []
        return [groups[i * len(groups) // limit] for i in range(limit)]

    def groups_present(self, name: str, values: Sequence[str], key: str = "item_id") -> set[str]:
        members = self._group_map(name, key).members
        return {v for v in values if v in members}

    # -- aliases -------------------------------------------------------------------------------
    def _alias_file(self) -> Path:
        return self.root / "aliases.json"

    def get_aliases(self) -> dict[str, str]:
        return read_aliases(self._alias_file())

    def set_aliases(self, mapping: dict[str, str | None]) -> None:
        with self._writing("move aliases"), self._lock:
            aliases = self.get_aliases()
            for alias, target in mapping.items():
                if target is None:
                    aliases.pop(alias, None)
                elif not self.collection_exists(target):
                    raise NotFoundError(f"cannot point alias {alias!r} at missing {target!r}")
                else:
                    aliases[alias] = target
            write_json_atomic(self._alias_file(), aliases)

    def replace_aliases(self, mapping: dict[str, str]) -> None:
        with self._writing("repair aliases"), self._lock:
            missing = [t for t in mapping.values() if not self.collection_exists(t)]
            if missing:
                raise NotFoundError(f"cannot point aliases at missing {', '.join(missing)}")
            write_json_atomic(self._alias_file(), dict(mapping))

    # -- records -------------------------------------------------------------------------------
    def _record_file(self) -> Path:
        return self.root / _RECORDS

    def record_exists(self) -> bool:
        return self._record_file().exists() or self.collection_exists(LEGACY_RECORD)

    def ensure_record(self) -> bool:
        if self._record_file().exists():
            return False
        with self._writing("create the record"):
            legacy = self._legacy_entries()
            write_json_atomic(self._record_file(), {"entries": legacy})
            if legacy:
                self.drop_collection(LEGACY_RECORD)
            return not legacy

    def _legacy_entries(self) -> dict[str, dict[str, Any]]:
        """Entries of a record kept in an Edge shard by earlier p4r versions."""
        if not self.collection_exists(LEGACY_RECORD):
            return {}
        return {str(r.id): dict(r.payload or {}) for r in self.scroll(LEGACY_RECORD)}

    def _read_records(self) -> dict[str, dict[str, Any]]:
        path = self._record_file()
        if not path.exists():
            return self._legacy_entries()
        return read_records(path)

    def record_entries(self, match: tuple[str, str]) -> list[tuple[str, dict[str, Any]]]:
        key, value = match
        return [(pid, p) for pid, p in self._read_records().items() if p.get(key) == value]

    def record_put(self, entry_id: str, payload: dict[str, Any]) -> None:
        with self._writing("write the record"), self._lock:
            self.ensure_record()
            entries = self._read_records()
            entries[entry_id] = payload
            write_json_atomic(self._record_file(), {"entries": entries})

    def catalog_delta(self) -> OverlayDelta:
        """Published shards are never written: a delta is a small overlay version."""
        return OverlayDelta()

    def delete_ids(self, name: str, ids: Sequence[PointId]) -> int:
        with self._writing(f"delete from {name}"):
            if ids:
                self._written.add(name)
                try:
                    self._shard(name).update(qe.UpdateOperation.delete_points(list(ids)))
                except Exception as exc:
                    raise BackendError(f"delete from {name} failed: {exc}") from exc
                self._forget_groups(name)
            return len(ids)

    # -- user state ----------------------------------------------------------------------------
    def user_store(self, dataset: str, fingerprint: Fingerprint, params: ProfileParams, *,
                   cache_size: int = 0, ttl: float = 0.0) -> UserStore:
        key = (dataset, fingerprint_key(fingerprint), params)
        with self._lock:
            store = self._user_stores.get(key)
            if store is None:
                store = self._user_stores[key] = EdgeUserStore(
                    users_path(self.root, dataset), dataset, fingerprint, params,
                    cache_size=cache_size)
            else:
                store.resize_cache(cache_size)
            return store

    def drop_user_state(self, dataset: str) -> list[str]:
        with self._lock:
            for key in [k for k in self._user_stores if k[0] == dataset]:
                self._user_stores.pop(key).close()
        path = users_path(self.root, dataset)
        removed = [str(path)] if path.exists() else []
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return removed

    def close(self) -> None:
        with self._lock:
            for store in self._user_stores.values():
                store.close()
            self._user_stores.clear()
            for name, shard in self._shards.items():
                if name in self._written:  # readers never flush (a sealed shard refuses it)
                    shard.flush()
                shard.close()
            self._shards.clear()
            self._written.clear()
            for copy in self._copies.values():
                shutil.rmtree(copy, ignore_errors=True)
            self._copies.clear()
            self._groups.clear()
            for table in self._tables.values():
                if table is not None:
                    table.close()
            self._tables.clear()


_UNREAD = object()  # a collection whose payload table this process has not looked for yet


def _engine_metadata(spec: CollectionSpec) -> dict[str, Any]:
    """The engine's own keys in a collection's metadata (beside the version manifest)."""
    return {"dim": spec.dim, "keyword_indexes": list(spec.keyword_indexes),
            "multivector": spec.multivector, "group_by": list(spec.group_by),
            **({"max_group_size": spec.max_group_size} if spec.max_group_size else {})}


def _rows(vectors: np.ndarray | Sequence[Any]) -> list[Any]:
    """Engine rows: a list per point, or a list of lists per multivector point."""
    if isinstance(vectors, np.ndarray):
        return np.asarray(vectors, dtype=np.float32).tolist()
    return [np.asarray(v, dtype=np.float32).tolist() for v in vectors]


def _plain_vector(raw: Any) -> Any:
    """An engine vector as one row (the unnamed vector of a named-vector answer)."""
    if isinstance(raw, dict):
        return raw.get("", next(iter(raw.values())))
    return raw


def _pid(pid: Any) -> PointId:
    """Engine id as p4r's id type: ints stay ints, uuids (id scheme 1) become strings."""
    return pid if type(pid) is int else str(pid)


@contextlib.contextmanager
def _engine_errors(what: str, name: str) -> Iterator[None]:
    """Engine failures on a stored collection are damage: one line with the way out."""
    try:
        yield
    except P4RError:
        raise
    except Exception as exc:
        raise DamagedStoreError(f"cannot {what} {name}: {first_line(exc)}; "
                                f"{_recovery(name)}") from None


def _recovery(name: str) -> str:
    """What to run when a collection of ``name`` is damaged."""
    parsed = parse_collection_name(name)
    if parsed is None:
        return "restore the store folder from a backup"
    dataset = parsed[0]
    return (f"run `p4r index check --dataset {dataset}` to see what is damaged, then "
            f"`p4r index upsert --dataset {dataset}` to rebuild it")


def _match_filter(key: str, value: str | Sequence[str]) -> qe.Filter:
    """``payload[key] == value``, or ``in value`` for a list of values."""
    match = qe.MatchValue(value) if isinstance(value, str) else qe.MatchAny(list(value))
    return qe.Filter(must=[qe.FieldCondition(key=key, match=match)])


@register_backend("edge", "embedded Qdrant Edge shards under P4R_DATA_DIR (default)")
def open_edge(settings: Settings, client: Any = None) -> EdgeBackend:
    """The embedded store of ``settings.data_dir``; it opens its own files, so no client."""
    if client is not None:
        raise ConfigError("the edge backend opens its own files under P4R_DATA_DIR; an "
                          "existing client is for the server backend (P4R_BACKEND=server)")
    return EdgeBackend(settings.data_dir / "edge")
