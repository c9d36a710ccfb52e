"""Embedded backend on Qdrant Edge: one in-process shard per collection under ``data_dir``.

Layout: ``<root>/<collection>/shard/`` (Edge's files), ``<root>/<collection>/meta.json`` (p4r
metadata) and ``<root>/aliases.json`` (alias record, replaced atomically).
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from p4r.collections.base import Backend, CollectionSpec, GroupHit, Record, to_record
from p4r.errors import BackendError, NotFoundError
from p4r.fsutil import atomic_write_text

_PAGE = 1024


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace a JSON record atomically (alias record, collection metadata)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


class EdgeBackend(Backend):
    """Collections as Qdrant Edge shards in a folder; aliases in a JSON record."""

    kind = "edge"

    def __init__(self, root: Path, *, search_threads: int | None = 1) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.search_threads = search_threads
        self._shards: dict[str, qe.EdgeShard] = {}
        self._groups: dict[tuple[str, str], tuple[dict[Any, str], Counter[str]]] = {}
        self._lock = threading.RLock()

    def describe(self) -> str:
        return f"edge store {self.root}"

    # -- collections -------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return self.root / name

    def _config(self, dim: int) -> qe.EdgeConfig:
        vectors = qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)
        # Payload cached in RAM: explanations are read on the serving path.
        return qe.EdgeConfig(vectors=vectors, max_search_threads=self.search_threads,
                             payload_memory=qe.Memory.Cached)

    def _shard(self, name: str) -> qe.EdgeShard:
        with self._lock:
            shard = self._shards.get(name)
            if shard is None:
                if not self.collection_exists(name):
                    raise NotFoundError(f"collection {name!r} does not exist in {self.describe()}")
                try:
                    shard = qe.EdgeShard.load(
                        str(self._dir(name) / "shard"), self._config(self.vector_size(name))
                    )
                except Exception as exc:
                    raise BackendError(f"cannot open edge shard {self._dir(name)}: {exc}") from exc
                self._shards[name] = shard
            return shard

    def list_collections(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "meta.json").exists())

    def collection_exists(self, name: str) -> bool:
        return (self._dir(name) / "meta.json").exists()

    def create_collection(self, spec: CollectionSpec) -> None:
        with self._lock:
            folder = self._dir(spec.name)
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            try:
                shard = qe.EdgeShard.create(str(folder / "shard"), self._config(spec.dim))
                for key in spec.keyword_indexes:
                    shard.update(
                        qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword)
                    )
                shard.flush()
            except Exception as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise BackendError(f"cannot create edge shard {folder}: {exc}") from exc
            self._shards[spec.name] = shard
            meta = {"dim": spec.dim, "keyword_indexes": list(spec.keyword_indexes),
                    **spec.metadata}
            write_json_atomic(folder / "meta.json", meta)

    def drop_collection(self, name: str) -> None:
        with self._lock:
            shard = self._shards.pop(name, None)
            if shard is not None:
                shard.close()
            self._forget_groups(name)
            folder = self._dir(name)
            if folder.exists():
                # Remove meta first so a crash mid-delete never leaves a "live" half folder.
                (folder / "meta.json").unlink(missing_ok=True)
                shutil.rmtree(folder)

    def get_metadata(self, name: str) -> dict[str, Any]:
        path = self._dir(name) / "meta.json"
        if not path.exists():
            raise NotFoundError(f"collection {name!r} does not exist in {self.describe()}")
        return json.loads(path.read_text(encoding="utf-8"))

    def update_metadata(self, name: str, updates: dict[str, Any]) -> None:
        with self._lock:
            meta = self.get_metadata(name)
            meta.update(updates)
            write_json_atomic(self._dir(name) / "meta.json", meta)

    def vector_size(self, name: str) -> int:
        return int(self.get_metadata(name)["dim"])

    # -- points --------------------------------------------------------------------------------
    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        shard = self._shard(name)
        rows = np.asarray(vectors, dtype=np.float32).tolist()
        points = [qe.Point(pid, row, payload) for pid, row, payload in
                  zip(ids, rows, payloads, strict=True)]
        try:
            shard.update(qe.UpdateOperation.upsert_points(points))
            shard.flush()
        except Exception as exc:
            raise BackendError(f"upsert into {name} failed: {exc}") from exc
        self._forget_groups(name)

    def existing_ids(self, name: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        found = self._shard(name).retrieve(list(ids), False, False)
        return {str(r.id) for r in found}

    def count(self, name: str) -> int:
        return int(self._shard(name).count(qe.CountRequest(exact=True)))

    def count_distinct(self, name: str, key: str) -> int:
        limit = max(self.count(name), 1)
        response = self._shard(name).facet(qe.FacetRequest(key=key, limit=limit, exact=True))
        return len(response.hits)

    def scroll(
        self,
        name: str,
        *,
        match: tuple[str, str] | None = None,
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
        self, name: str, ids: Sequence[Any], *, with_vectors: bool = False,
        with_payload: bool = True,
    ) -> list[Record]:
        if not ids:
            return []
        found = self._shard(name).retrieve(list(ids), with_payload, with_vectors)
        return [to_record(r, with_vectors) for r in found]

    # -- search --------------------------------------------------------------------------------
    def _group_map(self, name: str, key: str) -> tuple[dict[Any, str], Counter[str]]:
        """point id → group and points per group, read once per collection version.

        Resolving hits through this map keeps payload reads off the hot path: Edge spends most
        of a small query materialising payload, so queries ask for ids and scores only. Keys
        are ``uuid.UUID.int``: hashing an int is C, hashing a UUID object runs Python.
        """
        cached = self._groups.get((name, key))
        if cached is None:
            group_of: dict[Any, str] = {}
            shard = self._shard(name)
            offset: Any = None
            while True:
                records, offset = shard.scroll(qe.ScrollRequest(
                    offset=offset, limit=_PAGE, with_payload=[key], with_vector=False))
                for rec in records:
                    group_of[_id_key(rec.id)] = str((rec.payload or {}).get(key))
                if offset is None:
                    break
            cached = (group_of, Counter(group_of.values()))
            self._groups[(name, key)] = cached
        return cached

    def _forget_groups(self, name: str) -> None:
        with self._lock:  # a serving thread may be filling the cache at the same moment
            for cache_key in [k for k in list(self._groups) if k[0] == name]:
                self._groups.pop(cache_key, None)

    def best_per_group(
        self, name: str, vectors: np.ndarray, groups: Sequence[Sequence[str]], key: str = "item_id"
    ) -> list[list[GroupHit]]:
        shard = self._shard(name)
        group_of, sizes = self._group_map(name, key)
        requests: list[qe.QueryRequest | None] = []
        expected: list[int] = []
        for vector, values in zip(np.asarray(vectors, dtype=np.float32), groups, strict=True):
            wanted = list(dict.fromkeys(values))
            counts = [sizes.get(v, 0) for v in wanted]
            limit = sum(counts)
            expected.append(sum(1 for c in counts if c))
            requests.append(qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(vector),
                filter=qe.Filter(must=[qe.FieldCondition(key=key, match=qe.MatchAny(wanted))]),
                with_payload=False,
                with_vector=False,
                # Filtered sets are small, so this costs nothing and rules out HNSW misses.
                params=qe.SearchParams(exact=True),
            ) if limit else None)
        live = [r for r in requests if r is not None]
        try:
            if len(live) == 1:
                answers = [shard.query(live[0])]
            elif live:
                answers = shard.query_batch(qe.QueryBatchRequest(live))
            else:
                answers = []
        except Exception as exc:
            raise BackendError(f"query on {name} failed: {exc}") from exc
        results: list[list[GroupHit]] = []
        it = iter(answers)
        for request, n_groups in zip(requests, expected, strict=True):
            best: list[GroupHit] = []
            if request is not None:
                seen: set[str] = set()
                for hit in next(it):  # score-sorted: the first hit of a group is its best
                    pid = hit.id
                    group = group_of.get(_id_key(pid))
                    if group is None or group in seen:
                        continue
                    seen.add(group)
                    best.append(GroupHit(group=group, point_id=pid, score=hit.score))
                    if len(best) == n_groups:
                        break  # every group has its best: skip decoding the remaining ids
            results.append(best)
        return results

    # -- aliases -------------------------------------------------------------------------------
    def _alias_file(self) -> Path:
        return self.root / "aliases.json"

    def get_aliases(self) -> dict[str, str]:
        path = self._alias_file()
        if not path.exists():
            return {}
        return dict(json.loads(path.read_text(encoding="utf-8")))

    def set_aliases(self, mapping: dict[str, str | None]) -> None:
        with self._lock:
            aliases = self.get_aliases()
            for alias, target in mapping.items():
                if target is None:
                    aliases.pop(alias, None)
                elif not self.collection_exists(target):
                    raise NotFoundError(f"cannot point alias {alias!r} at missing {target!r}")
                else:
                    aliases[alias] = target
            write_json_atomic(self._alias_file(), aliases)

    def close(self) -> None:
        with self._lock:
            for shard in self._shards.values():
                shard.close()
            self._shards.clear()
            self._groups.clear()


def _id_key(pid: Any) -> Any:
    """Hashable fast key of an engine id: the integer of a UUID, else the id itself."""
    return pid.int if isinstance(pid, uuid.UUID) else pid


def _match_filter(key: str, value: str) -> qe.Filter:
    return qe.Filter(must=[qe.FieldCondition(key=key, match=qe.MatchValue(value))])


def _match_any_filter(key: str, values: list[str]) -> qe.Filter:
    return qe.Filter(must=[qe.FieldCondition(key=key, match=qe.MatchAny(values))])
