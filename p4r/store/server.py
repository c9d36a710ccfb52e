"""Qdrant server or cluster backend through ``qdrant-client`` (REST or gRPC)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
from qdrant_client import AsyncQdrantClient, QdrantClient, models

from p4r.encoder.cache import fingerprint_key
from p4r.encoder.fingerprint import Fingerprint
from p4r.errors import BackendError, NotFoundError, first_line, mask_credentials
from p4r.settings import ProfileParams, QdrantSettings, Settings
from p4r.store.base import (
    Backend,
    CollectionSpec,
    GroupAnswer,
    GroupHit,
    PointId,
    Record,
    to_record,
    top_groups_bound,
    vectors_by_id,
)
from p4r.store.deltas import InPlaceDelta
from p4r.store.lease import LEASE_ID, ONE, WriterLease, lease_filter
from p4r.store.naming import RECORD_COLLECTION
from p4r.store.registry import register_backend
from p4r.store.server_users import ServerUserStore
from p4r.store.users import UserStore

_PAGE = 1024
_ONE = [[1.0]]  # record entries are looked up by payload, never by vector


def connect(settings: QdrantSettings) -> QdrantClient:
    """Open a client and prove the server answers; an unreachable URL names itself."""
    if settings.url == ":memory:":
        return QdrantClient(":memory:")
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    try:
        # Reachability is checked right below, with a message that names the setting.
        client = QdrantClient(url=settings.url, api_key=api_key, prefer_grpc=settings.prefer_grpc,
                              grpc_port=settings.grpc_port, timeout=settings.timeout,
                              check_compatibility=False)
        client.get_collections()
    except Exception as exc:
        reason = first_line(exc)
        raise BackendError(  # the URL may carry user:password; the reason may repeat it
            f"cannot reach Qdrant at {mask_credentials(settings.url)} (P4R_QDRANT__URL): "
            f"{mask_credentials(reason)}"
        ) from None
    return client


class ServerBackend(Backend):
    """Collections and aliases as real Qdrant collections and aliases.

    Args:
        client: an open client; the backend can be opened on a client the caller already has.
        url: where it points, for messages (masked); taken from the client when not given.
        layout: shards, replicas and write consistency of the collections it creates (a
            collection spec's own values win).
        aclient: the async twin of ``client`` (the serving path awaits it); where none is
            given it is opened on first use from ``async_settings`` (a URL), else the
            synchronous client answers (an in-process engine).
    """

    def __init__(self, client: QdrantClient, *, url: str = "",
                 layout: QdrantSettings | None = None, aclient: Any = None,
                 async_settings: QdrantSettings | None = None) -> None:
        self.client = client
        self.aclient = aclient
        # Where an async client can be opened on first use (a URL, not an in-process engine).
        self._async_settings = async_settings
        self.points_requested = 0  # persona points asked of the engine (measured in benches)
        self.layout = layout or QdrantSettings()
        self._user_stores: dict[tuple[str, str, ProfileParams], ServerUserStore] = {}
        self._lease = WriterLease(self, ttl=self.layout.lease_ttl)
        self._query_meta: dict[str, dict[str, Any]] = {}
        options = client.init_options
        self.local = bool(options.get("location") == ":memory:" or options.get("path"))
        self.url = url or str(options.get("url") or options.get("location")
                              or options.get("path") or "")

    def describe(self) -> str:
        return f"Qdrant at {mask_credentials(self.url) or 'an in-process client'}"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (NotFoundError, BackendError):
            raise
        except Exception as exc:
            raise self._error(what, exc) from None

    def _error(self, what: str, exc: Exception) -> Exception:
        """An engine failure as one p4r error: a missing collection is NotFoundError."""
        text = first_line(exc)
        if "not found" in text.lower() or "doesn't exist" in text.lower():
            return NotFoundError(f"{what}: {text}")
        return BackendError(f"{what} on {self.describe()} failed: {text}")

    def list_collections(self) -> list[str]:
        response = self._call("list collections", self.client.get_collections)
        return sorted(c.name for c in response.collections)

    def collection_exists(self, name: str) -> bool:
        return bool(self._call("check collection", self.client.collection_exists, name))

    def create_collection(self, spec: CollectionSpec) -> None:
        """Create a collection; one of the same name is never dropped (an error instead).

        Every p4r query is exact (filtered to a few candidates, or by id), so no HNSW graph
        is built (``m = 0``); vectors go on disk where the spec says so (interactions).
        """
        if self.collection_exists(spec.name):
            raise BackendError(f"collection {spec.name} already exists in {self.describe()}; "
                               "p4r never replaces a collection (another writer, or a "
                               "version number reused?)")
        metadata = {**spec.metadata, "dim": spec.dim,
                    "keyword_indexes": list(spec.keyword_indexes),
                    "multivector": spec.multivector,
                    **({"max_group_size": spec.max_group_size} if spec.max_group_size else {})}
        layout = self.layout.for_kind(spec.kind)
        datatype = layout.datatype or spec.datatype
        self._call(
            f"create collection {spec.name}",
            self.client.create_collection,
            collection_name=spec.name,
            vectors_config=models.VectorParams(
                size=spec.dim, distance=models.Distance.COSINE,
                multivector_config=models.MultiVectorConfig(
                    comparator=models.MultiVectorComparator.MAX_SIM) if spec.multivector
                else None,
                datatype=models.Datatype.FLOAT16 if datatype == "float16" else None,
                on_disk=(spec.on_disk or layout.on_disk) or None),
            hnsw_config=models.HnswConfigDiff(m=0),
            shard_number=spec.shard_number or layout.shard_number,
            replication_factor=spec.replication_factor or layout.replication_factor,
            write_consistency_factor=spec.write_consistency_factor
            or layout.write_consistency_factor,
            metadata=metadata,
        )
        for key in spec.keyword_indexes:
            schema: models.PayloadSchemaType | models.KeywordIndexParams = \
                models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True) \
                if spec.tenant(key) else models.PayloadSchemaType.KEYWORD
            self._call(f"create payload index {key}", self.client.create_payload_index,
                       collection_name=spec.name, field_name=key, field_schema=schema,
                       wait=True)

    def drop_collection(self, name: str) -> None:
        self._query_meta.pop(name, None)
        self._call(f"drop collection {name}", self.client.delete_collection, name)

    def get_metadata(self, name: str) -> dict[str, Any]:
        if not self.collection_exists(name):
            raise NotFoundError(f"collection {name!r} does not exist in {self.describe()}")
        info = self._call(f"read collection {name}", self.client.get_collection, name)
        return dict(info.config.metadata or {})

    def update_metadata(self, name: str, updates: dict[str, Any]) -> None:
        self._query_meta.pop(name, None)
        self._call(f"update metadata of {name}", self.client.update_collection,
                   collection_name=name, metadata=updates)

    def vector_size(self, name: str) -> int:
        info = self._call(f"read collection {name}", self.client.get_collection, name)
        return int(info.config.params.vectors.size)

    def upsert(
        self, name: str, ids: Sequence[PointId], vectors: np.ndarray | Sequence[Any],
        payloads: Sequence[dict[str, Any]], *, durable: bool = False,
        mode: models.UpdateMode | None = None, only_if: tuple[str, Any] | None = None,
    ) -> None:
        """Insert or overwrite points (always waiting for the write).

        Args:
            durable: strong write ordering (user state that other hosts must read next).
            mode: insert only, or update only (default: either).
            only_if: ``(key, value)``: overwrite an existing point only while its payload
                ``key`` still equals ``value`` (a conditional write; absent points are
                inserted).
        """
        rows = (np.asarray(vectors, dtype=np.float32).tolist() if isinstance(vectors, np.ndarray)
                else [np.asarray(v, dtype=np.float32).tolist() for v in vectors])
        points = [models.PointStruct(id=pid, vector=row, payload=payload)
                  for pid, row, payload in zip(ids, rows, payloads, strict=True)]
        extra: dict[str, Any] = {}
        if durable:
            extra["ordering"] = models.WriteOrdering.STRONG
        if mode is not None:
            extra["update_mode"] = mode
        if only_if is not None:
            extra["update_filter"] = _match(*only_if)
        self._call(f"upsert into {name}", self.client.upsert, collection_name=name, points=points,
                   wait=True, **extra)

    def delete_ids(self, name: str, ids: Sequence[PointId]) -> int:
        """Delete points by id; how many were asked for."""
        if ids:
            self._call(f"delete from {name}", self.client.delete, collection_name=name,
                       points_selector=models.PointIdsList(points=list(ids)), wait=True,
                       ordering=models.WriteOrdering.STRONG)
        return len(ids)

    def delete_where(self, name: str, key: str, value: Any) -> int:
        """Delete every point whose payload ``key`` equals ``value``; how many there were."""
        flt = _match(key, value)
        found = int(self._call(f"count {name}", self.client.count, collection_name=name,
                               count_filter=flt, exact=True).count)
        if found:
            self._call(f"delete from {name}", self.client.delete, collection_name=name,
                       points_selector=models.FilterSelector(filter=flt), wait=True,
                       ordering=models.WriteOrdering.STRONG)
        return found

    def existing_ids(self, name: str, ids: Sequence[PointId]) -> set[PointId]:
        if not ids:
            return set()
        found = self._call(f"retrieve from {name}", self.client.retrieve, collection_name=name,
                           ids=list(ids), with_payload=False, with_vectors=False)
        return {r.id if isinstance(r.id, int) else str(r.id) for r in found}

    def count(self, name: str) -> int:
        return int(self._call(f"count {name}", self.client.count, collection_name=name,
                              exact=True).count)

    def count_distinct(self, name: str, key: str) -> int:
        limit = max(self.count(name), 1)
        response = self._call(f"facet {name}.{key}", self.client.facet, collection_name=name,
                              key=key, limit=limit, exact=True)
        return len(response.hits)

    def payload_indexes(self, name: str) -> set[str] | None:
        if self.local:
            return None  # local mode keeps no payload indexes: nothing to verify
        info = self._call(f"read collection {name}", self.client.get_collection, name)
        return set(info.payload_schema or {})

    def scroll(
        self,
        name: str,
        *,
        match: tuple[str, str | Sequence[str]] | None = None,
        with_vectors: bool = False,
        payload_keys: Sequence[str] | None = None,
    ) -> Iterator[Record]:
        flt = None
        if match:
            key, value = match
            flt = _match(key, value) if isinstance(value, str) else _any(key, value)
        with_payload: Any = list(payload_keys) if payload_keys is not None else True
        offset: Any = None
        while True:
            records, offset = self._call(
                f"scroll {name}", self.client.scroll, collection_name=name, scroll_filter=flt,
                limit=_PAGE, offset=offset, with_payload=with_payload, with_vectors=with_vectors)
            for rec in records:
                yield to_record(rec, with_vectors)
            if offset is None:
                return

    def retrieve(
        self, name: str, ids: Sequence[PointId], *, with_vectors: bool = False,
        with_payload: bool = True, consistent: bool = False,
    ) -> list[Record]:
        """Points by id; ``consistent`` reads with the configured read consistency (user
        state another host may have just written)."""
        if not ids:
            return []
        extra = {"consistency": self.layout.read_consistency} if consistent else {}
        found = self._call(f"retrieve from {name}", self.client.retrieve, collection_name=name,
                           ids=list(ids), with_payload=with_payload, with_vectors=with_vectors,
                           **extra)
        return [to_record(r, with_vectors) for r in found]

    def best_per_group(
        self, name: str, vectors: np.ndarray, groups: Sequence[Sequence[str]], key: str = "item_id",
        *, limits: Sequence[int | None] | None = None,
    ) -> list[GroupAnswer]:
        """One batched engine call for every user: filter to the candidates, ask for enough
        points that each candidate's best is among them (for a top k, just enough that the k
        best items are), keep the first hit per item. A bounded request learns which of its
        candidates have points from one facet call over every bounded request's candidates."""
        plan = self._plan_groups(name, vectors, groups, key, limits)
        answers = self._call(f"batched query on {name}", self.client.query_batch_points,
                             collection_name=name, requests=plan.requests) \
            if plan.requests else []
        present = self.groups_present(name, plan.union, key) if plan.union else set()
        return plan.decode(answers, present)

    async def abest_per_group(
        self, name: str, vectors: np.ndarray, groups: Sequence[Sequence[str]], key: str = "item_id",
        *, limits: Sequence[int | None] | None = None,
    ) -> list[GroupAnswer]:
        """:meth:`best_per_group` through the async client: the query and the facet call go
        out together."""
        aclient = self._async()
        if aclient is None:
            return self.best_per_group(name, vectors, groups, key, limits=limits)
        plan = self._plan_groups(name, vectors, groups, key, limits)
        query = aclient.query_batch_points(collection_name=name, requests=plan.requests) \
            if plan.requests else _nothing()
        facet = aclient.facet(collection_name=name, key=key, facet_filter=_any(key, plan.union),
                              limit=len(plan.union), exact=True) if plan.union else _nothing()
        answers, facets = await self._acall(f"batched query on {name}",
                                            asyncio.gather(query, facet))
        present = {str(h.value) for h in facets.hits} if plan.union else set()
        return plan.decode(answers or [], present)

    def _plan_groups(self, name: str, vectors: np.ndarray, groups: Sequence[Sequence[str]],
                     key: str, limits: Sequence[int | None] | None) -> _GroupPlan:
        multi, per_group = self._query_shape(name, key)
        limits = list(limits or [None] * len(groups))
        wanted_all = [sorted(set(values)) for values in groups]
        requests: list[models.QueryRequest] = []
        bounded: list[bool] = []
        for vector, wanted, limit in zip(np.asarray(vectors, dtype=np.float32), wanted_all,
                                         limits, strict=True):
            bounded.append(limit is not None and limit < len(wanted))
            if not wanted:
                continue
            engine_limit = top_groups_bound([per_group] * len(wanted), limit) \
                if bounded[-1] and limit is not None else len(wanted) * per_group
            self.points_requested += max(engine_limit, 1)
            row = vector.tolist()
            requests.append(models.QueryRequest(
                query=[row] if multi else row, filter=_any(key, wanted),
                limit=max(engine_limit, 1), params=models.SearchParams(exact=True),
                with_payload=[key], with_vector=False))
        union = sorted({v for wanted, b in zip(wanted_all, bounded, strict=True) if b
                        for v in wanted})
        return _GroupPlan(key, wanted_all, limits, bounded, requests, union)

    def group_sizes(self, name: str, key: str = "item_id") -> dict[str, int]:
        hits = self._call(f"facet {name}.{key}", self.client.facet, collection_name=name,
                          key=key, limit=max(self.count(name), 1), exact=True).hits
        return {str(h.value): int(h.count) for h in hits}

    def groups_present(self, name: str, values: Sequence[str], key: str = "item_id") -> set[str]:
        wanted = sorted(set(values))
        if not wanted:
            return set()
        hits = self._call(f"facet {name}.{key}", self.client.facet, collection_name=name,
                          key=key, facet_filter=_any(key, wanted), limit=len(wanted), exact=True)
        return {str(h.value) for h in hits.hits}

    async def agroups_present(self, name: str, values: Sequence[str],
                              key: str = "item_id") -> set[str]:
        """:meth:`groups_present` through the async client."""
        aclient = self._async()
        wanted = sorted(set(values))
        if aclient is None or not wanted:
            return self.groups_present(name, values, key)
        hits = await self._acall(f"facet {name}.{key}", aclient.facet(
            collection_name=name, key=key, facet_filter=_any(key, wanted), limit=len(wanted),
            exact=True))
        return {str(h.value) for h in hits.hits}

    async def ascroll_all(self, name: str, *,
                          match: tuple[str, str] | None = None) -> list[Record]:
        """:meth:`scroll_all` through the async client (one page: a small filtered read)."""
        aclient = self._async()
        if aclient is None:
            return self.scroll_all(name, match=match)
        out: list[Record] = []
        offset: Any = None
        while True:
            records, offset = await self._acall(f"scroll {name}", aclient.scroll(
                collection_name=name, scroll_filter=_match(*match) if match else None,
                limit=_PAGE, offset=offset, with_payload=True, with_vectors=False))
            out += [to_record(rec, False) for rec in records]
            if offset is None:
                return out

    async def aretrieve_payloads(self, name: str,
                                 ids: Sequence[PointId]) -> dict[PointId, dict[str, Any]]:
        """:meth:`retrieve_payloads` through the async client."""
        aclient = self._async()
        if aclient is None or not ids:
            return self.retrieve_payloads(name, ids)
        found = await self._acall(f"retrieve from {name}", aclient.retrieve(
            collection_name=name, ids=list(ids), with_payload=True, with_vectors=False))
        return {(r.id if isinstance(r.id, int) else str(r.id)): dict(r.payload or {})
                for r in found}

    async def aretrieve(
        self, name: str, ids: Sequence[PointId], *, with_vectors: bool = False,
        with_payload: bool = True, consistent: bool = False,
    ) -> list[Record]:
        """:meth:`retrieve` through the async client."""
        aclient = self._async()
        if aclient is None or not ids:
            return self.retrieve(name, ids, with_vectors=with_vectors,
                                 with_payload=with_payload, consistent=consistent)
        extra = {"consistency": self.layout.read_consistency} if consistent else {}
        found = await self._acall(f"retrieve from {name}", aclient.retrieve(
            collection_name=name, ids=list(ids), with_payload=with_payload,
            with_vectors=with_vectors, **extra))
        return [to_record(r, with_vectors) for r in found]

    async def aretrieve_vectors(self, name: str,
                                ids: Sequence[PointId]) -> dict[PointId, np.ndarray]:
        """:meth:`retrieve_vectors` through the async client."""
        return vectors_by_id(await self.aretrieve(name, ids, with_vectors=True,
                                                  with_payload=False))

    # -- the async client ----------------------------------------------------------------------
    def _async(self) -> Any:
        """The async client (made on first use, inside the serving event loop), or None where
        there is none (an in-process engine, or a client given without its async twin)."""
        if self.aclient is None and self._async_settings is not None:
            settings = self._async_settings
            api_key = settings.api_key.get_secret_value() if settings.api_key else None
            self.aclient = AsyncQdrantClient(
                url=settings.url, api_key=api_key, prefer_grpc=settings.prefer_grpc,
                grpc_port=settings.grpc_port, timeout=settings.timeout,
                check_compatibility=False)
        return self.aclient

    async def _acall(self, what: str, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (NotFoundError, BackendError):
            raise
        except Exception as exc:
            raise self._error(what, exc) from None

    async def aclose(self) -> None:
        """Close the async client (a serving process's shutdown)."""
        if self.aclient is not None:
            await self.aclient.close()
            self.aclient = None

    def _query_shape(self, name: str, key: str) -> tuple[bool, int]:
        """Whether a collection is multivector, and the most points one group holds: read once
        per collection (a published collection does not change). Collections written before
        the group size was recorded get it from one facet call."""
        shape = self._query_meta.get(name)
        if shape is None:
            meta = self.get_metadata(name)
            multi = bool(meta.get("multivector"))
            size = 1 if multi else int(meta.get("max_group_size") or 0)
            if not size:
                hits = self._call(f"facet {name}.{key}", self.client.facet, collection_name=name,
                                  key=key, limit=max(self.count(name), 1), exact=True).hits
                size = max((int(h.count) for h in hits), default=1)
            shape = self._query_meta[name] = {"multi": multi, "size": size}
        return bool(shape["multi"]), int(shape["size"])

    def get_aliases(self) -> dict[str, str]:
        response = self._call("list aliases", self.client.get_aliases)
        return {a.alias_name: a.collection_name for a in response.aliases}

    def set_aliases(self, mapping: dict[str, str | None]) -> None:
        current = self.get_aliases()
        operations: list[Any] = []
        for alias, target in mapping.items():
            if alias in current:
                operations.append(models.DeleteAliasOperation(
                    delete_alias=models.DeleteAlias(alias_name=alias)))
            if target is not None:
                if not self.collection_exists(target):
                    raise NotFoundError(f"cannot point alias {alias!r} at missing {target!r}")
                operations.append(models.CreateAliasOperation(create_alias=models.CreateAlias(
                    collection_name=target, alias_name=alias)))
        if operations:
            # One request: Qdrant applies the whole list atomically, so readers never see a gap.
            self._call("update aliases", self.client.update_collection_aliases,
                       change_aliases_operations=operations)

    # -- records: a small collection, one point per entry --------------------------------------
    def record_exists(self) -> bool:
        return self.collection_exists(RECORD_COLLECTION)

    def ensure_record(self) -> bool:
        if self.record_exists():
            return False
        self.create_collection(CollectionSpec(
            name=RECORD_COLLECTION, dim=1, keyword_indexes=("kind", "dataset"),
            metadata={"p4r": "migration record"}))
        return True

    def record_entries(self, match: tuple[str, str]) -> list[tuple[str, dict[str, Any]]]:
        if not self.record_exists():
            return []
        return [(str(r.id), r.payload or {}) for r in self.scroll(RECORD_COLLECTION, match=match)]

    def record_put(self, entry_id: str, payload: dict[str, Any]) -> None:
        self.ensure_record()
        self.upsert(RECORD_COLLECTION, [entry_id], np.asarray(_ONE, dtype=np.float32), [payload])

    def catalog_delta(self) -> InPlaceDelta:
        """A server's collections may be written while served: deltas go in place."""
        return InPlaceDelta()

    # -- the writer lease ----------------------------------------------------------------------
    def writer(self, what: str, timeout: float = 0.0) -> AbstractContextManager[None]:
        """Hold the store's writer lease (in Qdrant: several machines may try to write)."""
        return self._lease.hold(what, timeout)

    def check_writer(self) -> None:
        self._lease.check()

    def read_lease(self) -> dict[str, Any] | None:
        """The current lease entry, or None (read with the configured consistency)."""
        if not self.record_exists():
            return None
        found = self.retrieve(RECORD_COLLECTION, [LEASE_ID], consistent=True)
        return dict(found[0].payload or {}) if found else None

    def write_lease(self, payload: dict[str, Any], *, replacing: str | None) -> None:
        """Write the lease: only if absent (``replacing`` None), else only over that token."""
        self.upsert(RECORD_COLLECTION, [LEASE_ID], ONE, [payload], durable=True,
                    mode=models.UpdateMode.INSERT_ONLY if replacing is None else None,
                    only_if=("token", replacing) if replacing is not None else None)

    def delete_lease(self, token: str) -> None:
        """Delete the lease if it still carries ``token``."""
        self._call("release the writer lease", self.client.delete,
                   collection_name=RECORD_COLLECTION, wait=True,
                   points_selector=models.FilterSelector(filter=lease_filter(token)))

    # -- user state ----------------------------------------------------------------------------
    def user_store(self, dataset: str, fingerprint: Fingerprint, params: ProfileParams, *,
                   cache_size: int = 0, ttl: float = 0.0) -> UserStore:
        key = (dataset, fingerprint_key(fingerprint), params)
        store = self._user_stores.get(key)
        if store is None:
            store = self._user_stores[key] = ServerUserStore(self, dataset, fingerprint, params)
        store.resize_cache(cache_size, ttl)
        return store

    def user_collections(self, dataset: str) -> list[str]:
        """Every user-state collection of ``dataset`` (all encoders)."""
        pattern = re.compile(rf"^p4r_{re.escape(dataset)}_(interactions|profiles)_u[0-9a-f]{{12}}$")
        return [n for n in self.list_collections() if pattern.match(n)]

    def drop_user_state(self, dataset: str) -> list[str]:
        names = self.user_collections(dataset)
        for name in names:
            self.drop_collection(name)
        self.clear_forgotten(dataset)
        self._user_stores = {k: v for k, v in self._user_stores.items() if k[0] != dataset}
        return names

    def remember_forgotten(self, dataset: str, user_id: str) -> None:
        """Record that a user was forgotten (a re-index must not bring them back)."""
        self.record_put(_forgotten_id(dataset, user_id),
                        {"kind": "forgotten", "dataset": dataset, "user_id": user_id,
                         "at": time.time()})

    def is_forgotten(self, dataset: str, user_id: str) -> bool:
        """Whether a user of ``dataset`` was forgotten (one read by id)."""
        if not self.record_exists():
            return False
        return bool(self.retrieve(RECORD_COLLECTION, [_forgotten_id(dataset, user_id)],
                                  consistent=True))

    def forgotten_users(self, dataset: str) -> set[str]:
        """Every forgotten user of ``dataset``."""
        return {str(p.get("user_id")) for _, p in self.record_entries(("dataset", dataset))
                if p.get("kind") == "forgotten"}

    def clear_forgotten(self, dataset: str) -> None:
        """Forget the forgotten users of a dropped dataset (their data is gone with it)."""
        if self.record_exists():
            self._call("delete forgotten users", self.client.delete,
                       collection_name=RECORD_COLLECTION, wait=True,
                       points_selector=models.FilterSelector(filter=models.Filter(must=[
                           models.FieldCondition(key="kind",
                                                 match=models.MatchValue(value="forgotten")),
                           models.FieldCondition(key="dataset",
                                                 match=models.MatchValue(value=dataset))])))

    def close(self) -> None:
        self.client.close()


@register_backend("server", "a Qdrant server or cluster at P4R_QDRANT__URL")
def open_server(settings: Settings, client: QdrantClient | None = None) -> ServerBackend:
    """A backend on ``client``, or on a new client connected to ``settings.qdrant.url``."""
    if client is None:
        remote = settings.qdrant.url != ":memory:"
        return ServerBackend(connect(settings.qdrant), url=settings.qdrant.url,
                             layout=settings.qdrant,
                             async_settings=settings.qdrant if remote else None)
    return ServerBackend(client, layout=settings.qdrant)


def _match(key: str, value: Any) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key=key,
                                                     match=models.MatchValue(value=value))])


def _forgotten_id(dataset: str, user_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"p4r/forgotten/{dataset}/{user_id}"))


@dataclass
class _GroupPlan:
    """The engine requests of one best_per_group call, and how to read their answers."""

    key: str
    wanted: list[list[str]]
    limits: list[int | None]
    bounded: list[bool]
    requests: list[models.QueryRequest]
    union: list[str]

    def decode(self, answers: Sequence[Any], present_any: set[str]) -> list[GroupAnswer]:
        """Each request's best point per group (score order, ties by group) and its groups
        with points (from the facet for bounded requests, else from the hits)."""
        it = iter(answers)
        results: list[GroupAnswer] = []
        for wanted, limit, is_bounded in zip(self.wanted, self.limits, self.bounded,
                                             strict=True):
            best: dict[str, GroupHit] = {}
            if wanted:
                for point in next(it).points:  # score-sorted: the first hit of an item wins
                    group = str((point.payload or {}).get(self.key))
                    if group not in best:
                        pid = point.id if isinstance(point.id, int) else str(point.id)
                        best[group] = GroupHit(group, pid, float(point.score))
            hits = sorted(best.values(), key=lambda h: (-h.score, h.group))
            present = present_any.intersection(wanted) if is_bounded else set(best)
            results.append(GroupAnswer(hits[:limit] if limit is not None else hits, present))
        return results


def _any(key: str, values: Sequence[str]) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key=key, match=models.MatchAny(any=list(
        values)))])


async def _nothing() -> None:
    return None
