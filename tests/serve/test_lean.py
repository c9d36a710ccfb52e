"""The lean path of the two rerank routes (p4r.serve.lean) against the framework's: the same
request sent to an app with the lean path and to one without (``create_app(lean=False)``, the
FastAPI routes as they were) gets the same status, body and headers, for answers and for every
class of refusal; answers equal the library's; the OpenAPI document does not change."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from p4r.errors import BackendError, NotFoundError
from p4r.query import Reranker, RerankRequest
from p4r.serve.app import create_app
from p4r.serve.lean import LeanRoutes, dump_json
from p4r.serve.protocol import ARRIVALS, Arrivals
from p4r.settings import Settings
from tests.serve.conftest import LOCAL, local_client, rerank_at_once
from tests.serve.test_gate import serve_with

CANDS = ["tide-sushi", "polar-scoop-gelato", "cafe-lumen", "noodle-harbor", "taqueria-sol"]
JSON = {"content-type": "application/json"}
KEY = "r-key-0123456789"

# (name, method, path, body: JSON value, or bytes sent as they are, headers)
Case = tuple[str, str, str, Any, dict[str, str]]

ANSWERS: list[Case] = [
    ("user", "POST", "/v1/rerank", {"user_id": "u-chloe", "candidates": CANDS}, {}),
    ("k", "POST", "/v1/rerank", {"user_id": "u-chloe", "candidates": CANDS, "k": 2}, {}),
    ("unknown allowed", "POST", "/v1/rerank",
     {"user_id": "u-ben", "candidates": [*CANDS[:4], "ghost"], "allow_unknown": True}, {}),
    ("repeats and padding", "POST", "/v1/rerank",
     {"user_id": "u-ben", "candidates": ["tide-sushi", "[PAD]", "tide-sushi", "cafe-lumen"]}, {}),
    ("charset", "POST", "/v1/rerank", b'{"user_id": "u-ana", "candidates": ["cafe-lumen"]}',
     {"content-type": "application/json; charset=utf-8"}),
    ("history", "POST", "/v1/rerank",
     {"history": [{"item_id": "cafe-lumen", "timestamp": 1705313400, "text": "Great coffee."}],
      "candidates": CANDS}, {}),
    ("batch", "POST", "/v1/rerank/batch", {"requests": [
        {"user_id": u, "candidates": CANDS, "k": 3} for u in ("u-ana", "u-ben", "u-chloe")]}, {}),
    ("duplicate keys", "POST", "/v1/rerank",
     b'{"user_id": "nobody", "user_id": "u-ben", "candidates": ["cafe-lumen"]}', JSON),
    ("byte order mark", "POST", "/v1/rerank",
     b'\xef\xbb\xbf{"user_id": "u-ben", "candidates": ["cafe-lumen"]}', JSON),
    ("utf-16", "POST", "/v1/rerank",
     '{"user_id": "u-ben", "candidates": ["cafe-lumen"]}'.encode("utf-16"), JSON),
    ("+json type", "POST", "/v1/rerank",
     b'{"user_id": "u-ben", "candidates": ["cafe-lumen"]}', {"content-type": "application/x+json"}),
]

REFUSALS: list[Case] = [
    # 400: the library refuses it, or the Unicode of an id, or the host
    ("unknown candidates", "POST", "/v1/rerank", {"user_id": "u-ben", "candidates": ["ghost"]},
     {}),
    ("batch unknown candidates", "POST", "/v1/rerank/batch", {"requests": [
        {"user_id": "u-ana", "candidates": CANDS},
        {"user_id": "u-ben", "candidates": ["cafe-lumen", "ghost"]}]}, {}),
    ("no user", "POST", "/v1/rerank", {"candidates": CANDS}, {}),
    ("vector and history", "POST", "/v1/rerank", {"vector": [0.1] * 32, "history": [
        {"item_id": "tide-sushi"}], "candidates": ["cafe-lumen"]}, {}),
    ("vector dimension", "POST", "/v1/rerank", {"vector": [0.5, 0.5], "candidates": CANDS}, {}),
    ("lone surrogate", "POST", "/v1/rerank",
     b'{"user_id": "u-ben", "candidates": ["tide-sushi", "x\\ud800"]}', JSON),
    ("not utf-8", "POST", "/v1/rerank", b'{"user_id": "u-ben\xff", "candidates": ["a"]}', JSON),
    ("untrusted host", "POST", "/v1/rerank", {"user_id": "u-ben", "candidates": CANDS},
     {"host": "evil.example"}),
    # 404
    ("unknown user", "POST", "/v1/rerank", {"user_id": "nobody", "candidates": CANDS}, {}),
    ("batch unknown user", "POST", "/v1/rerank/batch", {"requests": [
        {"user_id": "u-ana", "candidates": CANDS}, {"user_id": "nobody", "candidates": CANDS}]},
     {}),
    # 405, 307: what the framework's routing answers
    ("get", "GET", "/v1/rerank", None, {}),
    ("trailing slash", "POST", "/v1/rerank/", {"user_id": "u-ben", "candidates": CANDS}, {}),
    # 413: limits of the settings and of the schema
    ("candidates over the limit", "POST", "/v1/rerank",
     {"user_id": "u-ben", "candidates": [f"i{n}" for n in range(6)]}, {}),
    ("batch over the limit", "POST", "/v1/rerank/batch",
     {"requests": [{"user_id": "u-ben", "candidates": ["a"]}] * 4}, {}),
    ("batch candidates over the limit", "POST", "/v1/rerank/batch", {"requests": [
        {"user_id": "u-ben", "candidates": ["a"]}, {"user_id": "u-ben", "candidates": ["a"] * 6}]},
     {}),
    ("history over the limit", "POST", "/v1/rerank",
     {"history": [{"item_id": "a"}] * 4, "candidates": ["a"]}, {}),
    ("text over the limit", "POST", "/v1/rerank",
     {"history": [{"item_id": "a", "text": "x" * 101}], "candidates": ["a"]}, {}),
    ("schema bound", "POST", "/v1/rerank", {"user_id": "u-ben", "candidates": ["a"] * 10_001},
     {}),
    ("body over the limit", "POST", "/v1/rerank",
     b'{"user_id": "u-ben", "candidates": [' + b'"x",' * 3000 + b'"y"]}', JSON),
    # 422: the schema refuses it
    ("malformed", "POST", "/v1/rerank", b'{"user_id": ', JSON),
    ("trailing garbage", "POST", "/v1/rerank", b'{"candidates": ["a"]} x', JSON),
    ("no candidates", "POST", "/v1/rerank", {"user_id": "u-ben"}, {}),
    ("empty candidates", "POST", "/v1/rerank", {"user_id": "u-ben", "candidates": []}, {}),
    ("extra field", "POST", "/v1/rerank/batch",
     {"requests": [{"user_id": "u-ben", "candidates": ["x"], "colour": 1}]}, {}),
    ("batch body on single", "POST", "/v1/rerank",
     {"requests": [{"user_id": "u-ben", "candidates": ["x"]}]}, {}),
    ("k zero", "POST", "/v1/rerank", {"user_id": "u-ben", "candidates": CANDS, "k": 0}, {}),
    ("k fraction", "POST", "/v1/rerank", {"user_id": "u-ben", "candidates": CANDS, "k": 2.5}, {}),
    ("NaN vector", "POST", "/v1/rerank", b'{"vector": [NaN], "candidates": ["a"]}', JSON),
    ("bad timestamp", "POST", "/v1/rerank", {"history": [
        {"item_id": "tide-sushi", "timestamp": "soon"}], "candidates": ["cafe-lumen"]}, {}),
    ("array", "POST", "/v1/rerank", b"[]", JSON),
    ("empty body", "POST", "/v1/rerank", b"", JSON),
    ("no content type", "POST", "/v1/rerank", b'{"user_id": "u-ben", "candidates": ["a"]}', {}),
    ("text/plain", "POST", "/v1/rerank", b'{"user_id": "u-ben", "candidates": ["a"]}',
     {"content-type": "text/plain"}),
]

COMPARED_HEADERS = ("content-type", "retry-after", "www-authenticate", "connection", "location",
                    "allow", "access-control-allow-origin")


def _limited(settings: Settings, **serve: Any) -> Settings:
    return serve_with(settings, max_candidates=5, max_batch=3, max_history=3,
                      max_text_chars=100, max_body_bytes=4096, **serve)


def _send(client: TestClient, case: Case) -> tuple[int, Any, dict[str, str]]:
    _, method, path, body, headers = case
    if isinstance(body, bytes):
        response = client.request(method, path, content=body, headers=headers,
                                  follow_redirects=False)
    elif body is None:
        response = client.request(method, path, headers=headers, follow_redirects=False)
    else:
        response = client.request(method, path, json=body, headers=headers,
                                  follow_redirects=False)
    shown = {name: response.headers[name] for name in COMPARED_HEADERS
             if name in response.headers}
    try:
        content: Any = response.json()
    except ValueError:
        content = response.text
    return response.status_code, content, shown


def _answers(settings: Settings, cases: list[Case], *, lean: bool,
             prepare: Callable[[TestClient], None] | None = None,
             **client_args: Any) -> list[tuple[int, Any, dict[str, str]]]:
    with local_client(create_app(settings, "demo", lean=lean), **client_args) as client:
        if prepare is not None:
            prepare(client)
        return [_send(client, case) for case in cases]


def _same(settings: Settings, cases: list[Case], **kwargs: Any) -> list[tuple[int, Any,
                                                                                 dict[str, str]]]:
    """Send ``cases`` to the lean app and to the framework's; assert equal answers."""
    lean = _answers(settings, cases, lean=True, **kwargs)
    framework = _answers(settings, cases, lean=False, **kwargs)
    for case, got, want in zip(cases, lean, framework, strict=True):
        assert got == want, case[0]
    return lean


def test_answers_equal_the_frameworks(demo_settings: Settings) -> None:
    answers = _same(_limited(demo_settings), ANSWERS)
    refused = [(case[0], answer[:2]) for case, answer in zip(ANSWERS, answers, strict=True)
               if answer[0] != 200]
    assert refused == []
    assert answers[-1][1]["items"][0]["item_id"] == "cafe-lumen"  # +json: the framework's


def test_refusals_equal_the_frameworks(demo_settings: Settings) -> None:
    """Every refusal class the two routes answer, compared in full: status, body, headers."""
    answers = _same(_limited(demo_settings), REFUSALS)
    assert {status for status, _, _ in answers} == {307, 400, 404, 405, 413, 422}
    for (status, content, _), case in zip(answers, REFUSALS, strict=True):
        if status >= 400:
            assert set(content) == {"error"}, case[0]
            assert content["error"]["code"] and content["error"]["message"], case[0]


def test_keys_and_cors_are_the_gates_on_both_paths(demo_settings: Settings) -> None:
    settings = serve_with(demo_settings, read_only_api_key=SecretStr(KEY),
                          cors_origins=["https://app.example"])
    body = {"user_id": "u-ben", "candidates": CANDS}
    cases: list[Case] = [
        ("no key", "POST", "/v1/rerank", body, {}),
        ("wrong key", "POST", "/v1/rerank/batch", {"requests": [body]}, {"api-key": "nope"}),
        ("bearer", "POST", "/v1/rerank", body, {"authorization": f"Bearer {KEY}"}),
        ("read key on a write", "POST", "/v1/interactions", {"interactions": [
            {"user_id": "u-ben", "item_id": "tide-sushi", "timestamp": 1}]}, {"api-key": KEY}),
        ("origin", "POST", "/v1/rerank", body, {"api-key": KEY, "origin": "https://app.example"}),
        ("other origin", "POST", "/v1/rerank", body, {"api-key": KEY, "origin": "https://x.io"}),
    ]
    statuses = [status for status, _, _ in _same(settings, cases)]
    assert statuses == [401, 401, 200, 403, 200, 200]


def test_busy_history_lane_answers_429_on_both_paths(demo_settings: Settings) -> None:
    def full(client: TestClient) -> None:
        client.app.state.p4r.history.capacity = 0  # type: ignore[attr-defined]

    case: Case = ("history", "POST", "/v1/rerank", {"history": [{"item_id": "cafe-lumen"}],
                                                    "candidates": CANDS}, {})
    [(status, content, headers)] = _same(demo_settings, [case], prepare=full)
    assert (status, content["error"]["code"], headers["retry-after"]) == (
        429, "too_many_requests", "1")


def test_not_ready_removed_and_broken_versions_answer_alike(tmp_path: Path,
                                                            demo_settings: Settings) -> None:
    body = {"user_id": "u-ben", "candidates": CANDS}
    single: Case = ("single", "POST", "/v1/rerank", body, {})
    batch: Case = ("batch", "POST", "/v1/rerank/batch", {"requests": [body]}, {})
    empty = demo_settings.model_copy(update={"data_dir": tmp_path / "empty"})
    [(status, content, _)] = _same(empty, [single])  # nothing indexed in this data dir
    assert (status, content["error"]["code"]) == (503, "not_indexed")

    def failing(exc: Exception) -> Callable[[TestClient], None]:
        def prepare(client: TestClient) -> None:
            async def fail(*_: Any, **__: Any) -> Any:
                raise exc

            client.app.state.p4r.reranker.arerank_batch = fail  # type: ignore[attr-defined]
        return prepare

    gone = NotFoundError("collection p4r_demo_personas_v1 not found")
    answers = _same(demo_settings, [single, batch], prepare=failing(gone))
    assert {(s, c["error"]["code"]) for s, c, _ in answers} == {(503, "version_gone")}
    bug = KeyError("token for http://user:pw@10.1.2.3:6333")
    answers = _same(demo_settings, [single, batch], prepare=failing(bug),
                    raise_server_exceptions=False)
    assert {(s, c["error"]["code"]) for s, c, _ in answers} == {(500, "internal")}
    assert "10.1.2.3" not in json.dumps(answers)


# -- the lean path itself --------------------------------------------------------------------
def _lean_routes(client: TestClient) -> LeanRoutes:
    layer: Any = client.app.front  # type: ignore[attr-defined]
    while not isinstance(layer, LeanRoutes):
        layer = layer.app
    return layer


@pytest.fixture
def counted(client: TestClient) -> Iterator[list[str]]:
    """The paths the lean routes passed on to the framework, in order."""
    passed: list[str] = []
    routes = _lean_routes(client)
    framework = routes.framework

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["path"])
        await framework(scope, receive, send)

    routes.framework = spy
    for endpoint in routes.routes.values():
        endpoint.framework = spy  # type: ignore[attr-defined]
    yield passed


def test_answers_are_the_librarys_and_the_framework_is_not_involved(
        client: TestClient, counted: list[str]) -> None:
    reranker: Reranker = client.app.state.p4r.reranker  # type: ignore[attr-defined]
    vector = reranker.user_vector("u-chloe").tolist()
    bodies = [{"user_id": "u-chloe", "candidates": CANDS},
              {"user_id": "u-ben", "candidates": [*CANDS, "ghost", "[PAD]", "cafe-lumen"],
               "allow_unknown": True, "k": 3},
              {"vector": vector, "candidates": CANDS}]
    requests = [RerankRequest(candidates=b["candidates"], user_id=b.get("user_id"),
                              vector=b.get("vector"), k=b.get("k")) for b in bodies]
    library = reranker.rerank_batch(requests, on_unknown="keep")
    expected = [{"user_id": r.user_id, "items": [i.as_dict() for i in r.items],
                 "unknown": r.unknown, "unscored": [u.as_dict() for u in r.unscored],
                 "version": 1} for r in library]
    for body, want in zip(bodies, expected, strict=True):
        answer = client.post("/v1/rerank", json=body)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == want
    batch = client.post("/v1/rerank/batch", json={"requests": bodies})
    assert batch.json() == {"results": [{k: v for k, v in w.items() if k != "version"}
                                        for w in expected], "version": 1}
    assert counted == []  # all answered by the lean path
    client.post("/v1/rerank", content=b'{"user_id": ', headers=JSON)
    client.get("/healthz")
    assert counted == ["/v1/rerank", "/healthz"]


def test_the_openapi_document_is_the_frameworks(demo_settings: Settings) -> None:
    docs = []
    for lean in (True, False):
        with local_client(create_app(demo_settings, "demo", lean=lean)) as client:
            docs.append(client.get("/openapi.json").json())
    assert docs[0] == docs[1]
    paths = docs[0]["paths"]
    for path, operation_id, body, answer in (
            ("/v1/rerank", "rerank", "RerankIn", "RerankAnswer"),
            ("/v1/rerank/batch", "rerank_batch", "RerankBatchIn", "RerankBatchOut")):
        operation = paths[path]["post"]
        assert operation["operationId"] == operation_id
        assert operation["requestBody"]["required"] is True
        assert operation["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{body}"}
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{answer}"}
        for status in ("400", "401", "404", "413", "422", "429", "503"):
            assert operation["responses"][status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorOut"}, (path, status)
        assert operation["security"] == [{"ApiKey": []}, {"Bearer": []}]


def test_a_non_finite_number_is_an_error_not_invalid_json() -> None:
    assert dump_json({"text": "NaN and Infinity are words here", "x": 0.5}) == (
        b'{"text":"NaN and Infinity are words here","x":0.5}')
    for number in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError):
            dump_json({"score": number})


def test_the_setting_turns_the_lean_path_off(demo_settings: Settings) -> None:
    """``P4R_SERVE__LEAN_RERANK=false``: the framework answers the rerank routes (the bench's
    reference server)."""
    def lean_layers(settings: Settings) -> int:
        layer: Any = create_app(settings, "demo").front
        found = 0
        while layer is not None:
            found += isinstance(layer, LeanRoutes)
            layer = getattr(layer, "app", None)
        return found

    assert lean_layers(demo_settings) == 1
    assert lean_layers(serve_with(demo_settings, lean_rerank=False)) == 0


# -- requests answered together (Coalescer) ----------------------------------------------------
@pytest.fixture(autouse=True)
def _no_protocol_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """These apps run without p4r serve's protocol: nothing counts arrivals."""
    monkeypatch.setattr(ARRIVALS, "counting", False)
    monkeypatch.setattr(ARRIVALS, "waiting", 0)


def test_arrivals_pair_started_tasks_with_their_entry_into_the_app() -> None:
    arrivals = Arrivals()
    assert not arrivals.alone()  # nothing counted (another server): never assume alone
    arrivals.started()
    arrivals.started()
    assert not arrivals.alone()
    arrivals.entered()
    assert not arrivals.alone()  # one more is about to run
    arrivals.entered()
    assert arrivals.alone()
    arrivals.entered()  # an entry the protocol did not count (never below zero)
    assert arrivals.waiting == 0 and arrivals.alone()


def test_a_request_with_none_waiting_is_answered_at_once(demo_settings: Settings,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """When the protocol counts no other request waiting, the coalescer does not yield a turn:
    two requests then answer one after the other, never as a group."""
    monkeypatch.setattr(ARRIVALS, "counting", True)
    together, groups = _concurrently(demo_settings, TOGETHER[:2])
    alone = [(status, body) for status, body, _ in _answers(demo_settings, TOGETHER[:2],
                                                             lean=False)]
    assert together == alone and groups == 0


TOGETHER: list[Case] = [
    ("user", "POST", "/v1/rerank", {"user_id": "u-chloe", "candidates": CANDS}, {}),
    ("k", "POST", "/v1/rerank", {"user_id": "u-ana", "candidates": CANDS, "k": 2}, {}),
    ("unknown allowed", "POST", "/v1/rerank",
     {"user_id": "u-ben", "candidates": [*CANDS[:4], "ghost"], "allow_unknown": True}, {}),
    ("repeats and padding", "POST", "/v1/rerank",
     {"user_id": "u-ben", "candidates": ["tide-sushi", "[PAD]", "tide-sushi", "cafe-lumen"]}, {}),
    ("same user again", "POST", "/v1/rerank", {"user_id": "u-chloe", "candidates": CANDS[::-1]},
     {}),
    ("interests", "POST", "/v1/rerank",
     {"user_id": "u-chloe", "candidates": CANDS, "mode": "interests"}, {}),
]
TOGETHER_REFUSED: list[Case] = [
    ("unknown user", "POST", "/v1/rerank", {"user_id": "nobody", "candidates": CANDS}, {}),
    ("unknown candidates", "POST", "/v1/rerank", {"user_id": "u-ben", "candidates": ["ghost"]},
     {}),
    ("vector dimension", "POST", "/v1/rerank", {"vector": [0.5, 0.5], "candidates": CANDS}, {}),
    ("candidates over the limit", "POST", "/v1/rerank",
     {"user_id": "u-ben", "candidates": [f"i{n}" for n in range(6)]}, {}),
    ("history", "POST", "/v1/rerank",
     {"history": [{"item_id": "cafe-lumen", "timestamp": 1705313400, "text": "Great coffee."}],
      "candidates": CANDS}, {}),
]


def _concurrently(settings: Settings, cases: list[Case],
                  prepare: Callable[[Any], None] | None = None
                  ) -> tuple[list[tuple[int, Any]], int]:
    """Send ``cases`` to a lean app all at once (one turn of its event loop); their statuses
    and bodies, and how many groups its coalescer answered together."""
    app = create_app(settings, "demo", lean=True)
    if prepare is not None:
        prepare(app)

    async def main() -> list[tuple[int, Any]]:
        state = app.state.p4r
        await state.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
                responses = await asyncio.gather(*[
                    client.post(path, json=body, headers=headers)
                    for _, _, path, body, headers in cases])
        finally:
            await state.stop()
        return [(r.status_code, r.json()) for r in responses]

    answers = asyncio.run(main())
    assert app.coalescer is not None
    return answers, app.coalescer.groups


def test_requests_that_arrive_together_are_answered_as_alone(demo_settings: Settings) -> None:
    """Concurrent single reranks are answered by one batched rerank, and each answer (or
    refusal, status and body) is what the framework gives that request sent by itself."""
    settings = serve_with(demo_settings, max_candidates=5, max_history=3, max_text_chars=100,
                          max_body_bytes=4096)
    # (cases, groups reranked together): a group with a refused member answers each alone
    for cases, grouped in ((TOGETHER, 1), (TOGETHER + TOGETHER_REFUSED, 0),
                           (TOGETHER_REFUSED[1:2] + TOGETHER, 1)):
        together, groups = _concurrently(settings, cases)
        alone = [(status, body) for status, body, _ in _answers(settings, cases, lean=False)]
        assert together == alone
        assert groups == grouped
    assert [status for status, _ in together] == [400] + [200] * len(TOGETHER)


def test_a_group_holds_at_most_a_batch(demo_settings: Settings) -> None:
    """Seven requests at once with P4R_SERVE__MAX_BATCH=3: groups of 3, 3 and a lone one,
    answered as alone."""
    settings = serve_with(demo_settings, max_batch=3)
    cases = (TOGETHER + TOGETHER)[:7]
    together, groups = _concurrently(settings, cases)
    alone = [(status, body) for status, body, _ in _answers(settings, cases, lean=False)]
    assert together == alone and groups == 2


def test_a_store_failure_is_every_members_answer_at_once(demo_settings: Settings) -> None:
    """The store fails the group's rerank: every member gets what a lone request gets from
    it (503 unavailable), from that one call: no second round of store calls."""
    calls = {"n": 0}

    def prepare(app: Any) -> None:
        async def down(fn: Any, *args: Any) -> Any:
            calls["n"] += 1
            raise BackendError("query on p4r_demo_personas_v1 failed: connection refused")

        app.state.p4r.hold = down

    lone, _ = _concurrently(demo_settings, TOGETHER[:1], prepare)
    assert lone[0][0] == 503 and calls["n"] == 1
    together, groups = _concurrently(demo_settings, TOGETHER, prepare)
    assert together == lone * len(TOGETHER)
    assert calls["n"] == 2 and groups == 0


def test_a_failed_group_leaves_no_request_waiting(demo_settings: Settings,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """When the group's rerank fails with a bug (not a refusal, not the store), it is
    logged and every member answers on its own, as it would have without the group."""
    def prepare(app: Any) -> None:
        state = app.state.p4r
        real_hold = state.hold
        calls = {"n": 0}

        async def failing_first(fn: Any, *args: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:  # the group's call: as if cancelled mid-way
                raise RuntimeError("lost the version")
            return await real_hold(fn, *args)

        state.hold = failing_first

    with caplog.at_level("ERROR", logger="p4r.serve"):
        together, groups = _concurrently(demo_settings, TOGETHER, prepare)
    alone = [(status, body) for status, body, _ in _answers(demo_settings, TOGETHER, lean=False)]
    assert together == alone and all(status == 200 for status, _ in together)
    assert groups == 0
    assert any("each is answered alone" in r.getMessage() for r in caplog.records)


def test_the_setting_turns_coalescing_off(demo_settings: Settings) -> None:
    settings = demo_settings.model_copy(update={"serve": demo_settings.serve.model_copy(
        update={"coalesce": False})})
    app = create_app(settings, "demo", lean=True)
    assert app.coalescer is None
    with local_client(app) as client:
        assert client.post("/v1/rerank", json={"user_id": "u-ben",
                                               "candidates": CANDS}).status_code == 200


@pytest.mark.parametrize("when", ["gathering", "reranking"])
def test_a_cancelled_leader_leaves_no_request_waiting(demo_settings: Settings,
                                                      when: str) -> None:
    """The leader's task is cancelled (a shutdown) while it gathers the others, or while
    the group's rerank runs: the others answer alone instead of waiting for it."""
    from p4r.query.models import RerankIn

    app = create_app(demo_settings, "demo", lean=True)
    coalescer = app.coalescer
    assert coalescer is not None
    bodies = [RerankIn.model_validate({"user_id": u, "candidates": CANDS})
              for u in ("u-ana", "u-ben", "u-chloe")]

    async def main() -> list[Any]:
        state = app.state.p4r
        await state.start()
        real_hold = state.hold
        started = asyncio.Event()

        async def stuck_once(fn: Any, *args: Any) -> Any:
            if len(args[0]) > 1:  # the group's rerank (alone, each has one body): stuck
                started.set()
                await asyncio.Event().wait()
            return await real_hold(fn, *args)

        state.hold = stuck_once
        try:
            tasks = [asyncio.create_task(coalescer.answer(b)) for b in bodies]
            if when == "gathering":
                await asyncio.sleep(0)  # all three ran once: the first yields, two joined
                assert coalescer._group is not None and len(coalescer._group) == 3
            else:
                await started.wait()
            tasks[0].cancel()
            done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        finally:
            await state.stop()
        return done

    leader, *others = asyncio.run(main())
    assert isinstance(leader, asyncio.CancelledError)
    assert [answer["user_id"] for answer in others] == ["u-ben", "u-chloe"]
    assert all(answer["items"] for answer in others)


def test_uvicorn_calls_the_hook_the_protocol_counts_arrivals_in() -> None:
    """GuardedProtocol counts arrivals where uvicorn starts a request's task; a uvicorn
    without that method would leave every lone request waiting a turn, silently."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert callable(getattr(HttpToolsProtocol, "_start_asgi_task", None))


@pytest.mark.system  # a real uvicorn on loopback, in this process
def test_under_uvicorn_lone_requests_skip_the_turn_and_concurrent_ones_group(
        demo_settings: Settings) -> None:
    """Through uvicorn and p4r serve's protocol, end to end: requests sent one after another
    are answered without waiting a turn (the protocol saw none waiting), requests sent at
    once on eight connections are reranked together, and the counts drain to zero."""
    import http.client
    import threading
    import time

    import uvicorn

    from p4r.bench.serve import free_port
    from p4r.serve.protocol import GuardedProtocol

    app = create_app(demo_settings, "demo", lean=True)
    coalescer = app.coalescer
    assert coalescer is not None
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           http=GuardedProtocol, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        users = ["u-ana", "u-ben", "u-chloe", "u-dev"] * 2
        bodies = [{"user_id": u, "candidates": CANDS} for u in users]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        alone = []
        for body in bodies:
            connection.request("POST", "/v1/rerank", json.dumps(body), JSON)
            response = connection.getresponse()
            alone.append((response.status, json.loads(response.read())))
        connection.close()
        assert [status for status, _ in alone] == [200] * len(bodies)
        assert coalescer.at_once == len(bodies) and coalescer.groups == 0

        assert rerank_at_once(port, bodies) == alone * 20
        assert coalescer.groups >= 1
        assert ARRIVALS.counting and ARRIVALS.waiting == 0
    finally:
        server.should_exit = True
        thread.join(30)
