"""Work lanes and versions, in process: encoding never blocks interactions or user-id
reranks; a version the server leaves is closed once no request holds it; a drop stops
serving; a removed version answers 503 ``version_gone``."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from fastapi.testclient import TestClient

from p4r.datasets.models import Persona
from p4r.errors import NotFoundError
from p4r.query import Reranker
from p4r.serve.app import create_app
from p4r.serve.state import ServeState
from p4r.settings import Settings
from p4r.store import open_backend
from p4r.store.lifecycle import drop_dataset, prune_versions
from tests.conftest import upsert
from tests.serve.conftest import local_client
from tests.serve.test_api import wait_for
from tests.serve.test_gate import serve_with

CANDS = ["tide-sushi", "cafe-lumen", "taqueria-sol"]
HISTORY = {"history": [{"item_id": "cafe-lumen", "text": "Lovely flat white."}],
           "candidates": CANDS}
NEW = {"interactions": [{"user_id": "u-ben", "item_id": "tide-sushi", "timestamp": 1.75e9,
                         "text": "Superb nigiri."}]}


def state_of(client: TestClient) -> ServeState:
    state: ServeState = client.app.state.p4r  # type: ignore[attr-defined]
    return state


_held: list[Any] = []  # tasks started by occupy(), kept alive until their job ends


def occupy(client: TestClient, lane_name: str) -> threading.Event:
    """Hold the lane's worker thread (and the served reranker) until the event is set."""
    release = threading.Event()
    state = state_of(client)

    async def start() -> None:
        job = state.call(getattr(state, lane_name), lambda _reranker: release.wait(30))
        _held.append(asyncio.ensure_future(job))
        await asyncio.sleep(0.05)  # the job is in the lane

    client.portal.call(start)  # type: ignore[union-attr]
    return release


def test_a_full_encoding_lane_answers_429_and_blocks_nothing_else(
        demo_settings: Settings) -> None:
    settings = serve_with(demo_settings, history_queue=1, allow_anonymous_writes=True)
    with local_client(create_app(settings, "demo")) as client:
        release = occupy(client, "history")
        try:
            busy = client.post("/v1/rerank", json=HISTORY)
            assert busy.status_code == 429
            assert busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["code"] == "too_many_requests"
            # user-id reranks run on the loop, interactions in their own lane: both answer.
            start = time.monotonic()
            assert client.post("/v1/rerank", json={"user_id": "u-ben",
                                                   "candidates": CANDS}).status_code == 200
            assert client.post("/v1/interactions", json=NEW).status_code == 200
            assert time.monotonic() - start < 10
        finally:
            release.set()
        assert wait_for(lambda: client.post("/v1/rerank", json=HISTORY),
                        lambda r: r.status_code == 200).status_code == 200


def _v2(demo_dataset: Any) -> Any:
    demo_dataset.personas["polar-scoop-gelato"] = [Persona(
        item_id="polar-scoop-gelato", persona_id="P1", name="Late-Night Scooper",
        description="Wants dessert after 10pm.", rationale="Open until midnight.")]
    return demo_dataset


def test_a_left_version_is_closed_once_no_request_holds_it(
        client: TestClient, demo_settings: Settings, demo_dataset: Any,
        tiny_encoder: Any) -> None:
    state = state_of(client)
    old: Reranker = state.reranker  # type: ignore[assignment]
    closed: list[int | None] = []
    close = old.backend.close

    def recording_close() -> None:
        closed.append(old.version)
        close()

    old.backend.close = recording_close  # type: ignore[method-assign]
    release = occupy(client, "writes")  # a write in progress holds version 1
    try:
        with open_backend(demo_settings) as store:
            upsert(_v2(demo_dataset), store, tiny_encoder, full=True)  # not an overlay of v1
        ready = wait_for(lambda: client.get("/readyz"), lambda r: r.json()["version"] == 2)
        assert ready.json()["version"] == 2
        assert state.reranker is not old
        time.sleep(0.3)
        assert closed == [], "closed while a request still held it"
    finally:
        release.set()
    wait_for(lambda: closed, bool)
    assert closed == [1]
    with open_backend(demo_settings) as store:  # prune removes v1: the server holds nothing
        assert [p.version for p in prune_versions(store, "demo", keep=1)] == [1]
    answer = client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS})
    assert (answer.status_code, answer.json()["version"]) == (200, 2)


def test_after_a_drop_the_server_answers_503_not_indexed(
        client: TestClient, demo_settings: Settings, demo_dataset: Any,
        tiny_encoder: Any) -> None:
    with open_backend(demo_settings) as store:
        drop_dataset(store, "demo")
    ready = wait_for(lambda: client.get("/readyz"), lambda r: r.status_code == 503)
    assert ready.json()["code"] == "not_indexed" and ready.json()["ready"] is False
    assert "not indexed" in ready.json()["error"]
    for answer in (client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS}),
                   client.post("/v1/interactions", json=NEW),
                   client.get("/v1/users/u-ben"), client.get("/v1/items/tide-sushi/personas")):
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "not_indexed"
    with open_backend(demo_settings) as store:  # indexed again: served again
        upsert(demo_dataset, store, tiny_encoder)
    ready = wait_for(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
    assert ready.json()["ready"] is True


def test_a_write_after_a_drop_is_refused_before_the_reload_notices(
        demo_settings: Settings) -> None:
    settings = serve_with(demo_settings, reload_interval=3600.0, allow_anonymous_writes=True)
    with local_client(create_app(settings, "demo")) as client:
        with open_backend(demo_settings) as store:
            drop_dataset(store, "demo")
        refused = client.post("/v1/interactions", json=NEW)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "not_indexed"
        # ... and the refusal woke the reload: readiness follows without the hour's wait.
        ready = wait_for(lambda: client.get("/readyz"), lambda r: r.status_code == 503)
        assert ready.json()["code"] == "not_indexed"


def test_a_removed_collection_answers_503_version_gone_and_reloads(client: TestClient) -> None:
    state = state_of(client)
    reranker: Reranker = state.reranker  # type: ignore[assignment]
    woken: list[bool] = []
    state.wake = lambda: woken.append(True)  # type: ignore[method-assign]

    async def gone(user_id: str) -> Any:
        raise NotFoundError(f"collection {reranker.personas!r} does not exist in edge store "
                            "/srv/p4r/edge")

    reranker.auser_profile = gone  # type: ignore[method-assign]
    answer = client.get("/v1/users/u-ben")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "version_gone" and "/srv" not in answer.text
    assert woken == [True]
    # An unknown item is still a 404, not a version problem.
    missing = client.get("/v1/items/collection-x/personas")
    assert missing.status_code == 404 and woken == [True]


def test_a_full_disk_answers_507_naming_the_file_not_the_folders(client: TestClient) -> None:
    from p4r.errors import StorageFullError

    reranker: Reranker = state_of(client).reranker  # type: ignore[assignment]

    def full(_: Any) -> Any:
        raise StorageFullError("/srv/p4r/data/demo/events.sqlite", "event log")

    reranker.add_interactions = full  # type: ignore[method-assign]
    answer = client.post("/v1/interactions", json=NEW)
    assert answer.status_code == 507
    assert answer.json()["error"] == {
        "code": "storage_full",
        "message": "events.sqlite: no space left on the device (event log); free some space "
                   "(or raise the quota) and run it again"}
