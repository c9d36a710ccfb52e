"""The async serving path answers exactly what the synchronous one does, on both backends;
on a server it reads through the async client."""

from __future__ import annotations

import asyncio

from qdrant_client import QdrantClient

from p4r.bench.rtt import DelayedAsyncClient
from p4r.query import Reranker, RerankRequest
from p4r.store.base import Backend
from p4r.store.server import ServerBackend
from tests.conftest import upsert

CANDS = ["cafe-lumen", "tide-sushi", "taqueria-sol", "noodle-harbor", "crumb-and-co",
         "sunny-side-diner", "ironwood-steakhouse", "polar-scoop-gelato", "nowhere"]
USERS = ["u-ana", "u-ben", "u-chloe", "u-dev"]


def _requests() -> list[RerankRequest]:
    return [RerankRequest(candidates=CANDS, user_id=u, k=k) for u in USERS for k in (None, 3)]


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    for x, y in zip(a, b, strict=True):
        assert [i.item_id for i in x.items] == [i.item_id for i in y.items]
        assert [i.persona for i in x.items] == [i.persona for i in y.items]
        assert [i.score for i in x.items] == [i.score for i in y.items]
        assert x.unknown == y.unknown == ["nowhere"]


def test_async_equals_sync(backend: Backend, demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    upsert(demo_dataset, backend, tiny_encoder)
    reranker = Reranker("demo", backend)
    sync = reranker.rerank_batch(_requests(), on_unknown="keep")
    _same(sync, asyncio.run(reranker.arerank_batch(_requests(), on_unknown="keep")))


def test_server_path_reads_through_the_async_client(demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    client = QdrantClient(":memory:")
    aclient = DelayedAsyncClient(client, rtt=0.0)
    backend = ServerBackend(client, url=":memory:", aclient=aclient)
    upsert(demo_dataset, backend, tiny_encoder)
    reranker = Reranker("demo", backend)
    sync = reranker.rerank_batch(_requests(), on_unknown="keep")
    before = aclient.calls
    _same(sync, asyncio.run(reranker.arerank_batch(_requests(), on_unknown="keep")))
    # Profiles of the whole batch in one read, one batched query (and its facet), one
    # summary query, one explanation read.
    assert 1 <= aclient.calls - before <= 6


class _Forbidden:
    """A sync client the async path must not touch."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the async serving path called the sync client's {name}")


def test_every_read_of_the_async_path_has_an_async_twin(demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    """Each store read the pipeline yields (profiles, recent vectors, queries, explanations,
    the winners' vectors of "because") goes through the async client on a server: a sync
    call would block the serving event loop for a round trip."""
    client = QdrantClient(":memory:")
    backend = ServerBackend(client, url=":memory:", aclient=DelayedAsyncClient(client, rtt=0.0))
    upsert(demo_dataset, backend, tiny_encoder)
    reranker = Reranker("demo", backend)  # binds through the sync client, before serving
    expected = reranker.rerank_batch(_requests(), on_unknown="keep")
    fresh = Reranker("demo", backend)  # empty caches: every read happens
    backend.client = _Forbidden()  # type: ignore[assignment]
    got = asyncio.run(fresh.arerank_batch(_requests(), on_unknown="keep"))
    _same(expected, got)
    assert any(item.because is not None for result in got for item in result.items)
