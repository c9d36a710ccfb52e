"""The contract apps code against: the OpenAPI document, one answer shape per route with the
index version, error codes, unscored candidates, limits, offline docs and metrics."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from p4r.query.results import unscored_of
from p4r.serve.app import create_app
from p4r.serve.models import ErrorCode
from p4r.settings import Settings
from tests.serve.conftest import local_client
from tests.serve.test_api import metric
from tests.serve.test_gate import serve_with

REPO = Path(__file__).resolve().parents[2]
CANDS = ["tide-sushi", "cafe-lumen", "taqueria-sol"]
OPERATIONS = {
    ("post", "/v1/rerank"): "rerank", ("post", "/v1/rerank/batch"): "rerank_batch",
    ("post", "/v1/interactions"): "add_interactions",
    ("delete", "/v1/users/{user_id}"): "forget_user", ("get", "/v1/users/{user_id}"): "get_user",
    ("get", "/v1/items/{item_id}/personas"): "get_item_personas",
    ("get", "/v1/users"): "list_users", ("get", "/v1/items"): "list_items",
    ("get", "/v1/items/lookup"): "lookup_items",
    ("get", "/v1/users/{user_id}/history"): "get_user_history",
    ("get", "/healthz"): "healthz", ("get", "/readyz"): "readyz", ("get", "/metrics"): "metrics",
}


@pytest.fixture
def doc(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def test_every_route_has_its_stable_operation_id(doc: dict[str, Any]) -> None:
    found = {(method, path): op["operationId"] for path, ops in doc["paths"].items()
             for method, op in ops.items()}
    assert found == OPERATIONS


def _only_references(prop: dict[str, Any]) -> bool:
    """A property whose schema is a model (or a list of one): its fields carry examples."""
    parts = prop.get("anyOf", [prop])
    return all("$ref" in p or p.get("type") == "null"
               or ("$ref" in p.get("items", {})) for p in parts)


def test_every_field_is_described_with_an_example(doc: dict[str, Any]) -> None:
    for name, schema in doc["components"]["schemas"].items():
        assert schema.get("description"), name
        for field, prop in schema.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{field}"
            if not _only_references(prop):
                assert prop.get("examples"), f"{name}.{field}"


def test_optional_inputs_are_optional_and_answers_complete(doc: dict[str, Any]) -> None:
    """Generators (openapi-typescript's defaults) turn a ``default`` into a required field:
    request models say their defaults in words; every answer field is required."""
    schemas = doc["components"]["schemas"]
    requests = {"RerankIn": ["candidates"], "RerankBatchIn": ["requests"],
                "HistoryEntry": ["item_id"], "InteractionsIn": ["interactions"],
                "LiveInteraction": ["item_id", "timestamp", "user_id"]}
    for name, required in requests.items():
        schema = schemas[name]
        assert sorted(schema.get("required", [])) == required, name
        for field, prop in schema["properties"].items():
            assert "default" not in prop, f"{name}.{field}"
    assert "Optional; default false." in schemas["RerankIn"]["properties"][
        "allow_unknown"]["description"]
    for name, schema in schemas.items():
        if name not in requests and "properties" in schema:
            assert sorted(schema.get("required", [])) == sorted(schema["properties"]), name


def test_the_schema_states_this_servers_limits(demo_settings: Settings) -> None:
    settings = serve_with(demo_settings, max_candidates=50, max_batch=7, max_history=9,
                          max_interactions=11, max_text_chars=333)
    with local_client(create_app(settings, "demo")) as client:
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["RerankIn"]["properties"]["candidates"]["maxItems"] == 50
    assert schemas["RerankIn"]["properties"]["history"]["anyOf"][0]["maxItems"] == 9
    assert schemas["RerankBatchIn"]["properties"]["requests"]["maxItems"] == 7
    assert schemas["InteractionsIn"]["properties"]["interactions"]["maxItems"] == 11
    assert schemas["LiveInteraction"]["properties"]["text"]["maxLength"] == 333
    assert schemas["HistoryEntry"]["properties"]["summary"]["anyOf"][0]["maxLength"] == 333


def test_routes_that_need_a_key_say_so(doc: dict[str, Any]) -> None:
    assert set(doc["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
    for (method, path), _ in OPERATIONS.items():
        security = doc["paths"][path][method].get("security")
        assert (security is not None) == path.startswith("/v1/"), path


def test_the_readme_tables_every_error_code() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Serving over HTTP"):readme.index("## Datasets")]
    documented = set(re.findall(r"^\| `([a-z_]+)` \| \d{3}", section, re.MULTILINE))
    assert documented == set(typing.get_args(ErrorCode))


# -- answers -------------------------------------------------------------------------------------
def test_every_answer_carries_the_version(client: TestClient) -> None:
    answers = [
        client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS}),
        client.post("/v1/rerank/batch", json={"requests": [{"user_id": "u-ben",
                                                            "candidates": CANDS}]}),
        client.post("/v1/interactions", json={"interactions": [
            {"user_id": "u-ben", "item_id": "tide-sushi", "timestamp": "2025-01-02T03:04:05Z"}]}),
        client.get("/v1/users/u-ben"), client.get("/v1/items/tide-sushi/personas"),
        client.get("/v1/users"), client.get("/v1/items"),
        client.get("/v1/items/lookup?ids=tide-sushi"), client.get("/v1/users/u-ben/history"),
        client.get("/healthz"),
        client.get("/readyz"), client.delete("/v1/users/u-dev"),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == 1, answer.request.url


def test_duplicates_and_padding_are_listed_not_dropped(client: TestClient) -> None:
    candidates = ["tide-sushi", "[PAD]", "cafe-lumen", "tide-sushi", "[PAD]", "tide-sushi"]
    answer = client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": candidates})
    assert answer.status_code == 200
    body = answer.json()
    assert sorted(i["item_id"] for i in body["items"]) == ["cafe-lumen", "tide-sushi"]
    assert body["unscored"] == [
        {"item_id": "[PAD]", "index": 1, "reason": "padding"},
        {"item_id": "tide-sushi", "index": 3, "reason": "duplicate"},
        {"item_id": "[PAD]", "index": 4, "reason": "padding"},
        {"item_id": "tide-sushi", "index": 5, "reason": "duplicate"}]
    # Every candidate is accounted for: ranked once, or listed with its reason.
    assert len(body["items"]) + len(body["unscored"]) == len(candidates)
    assert unscored_of(["a", "b"]) == []


@pytest.mark.parametrize(("path", "body", "field", "setting"), [
    ("/v1/rerank", {"user_id": "u-ben", "candidates": [f"i{n}" for n in range(6)]},
     "candidates", "P4R_SERVE__MAX_CANDIDATES"),
    ("/v1/rerank/batch", {"requests": [{"user_id": "u-ben", "candidates": ["a"]}] * 4},
     "requests", "P4R_SERVE__MAX_BATCH"),
    ("/v1/rerank/batch", {"requests": [{"user_id": "u-ben", "candidates": ["a"]},
                                       {"user_id": "u-ben", "candidates": ["a"] * 6}]},
     "requests[1].candidates", "P4R_SERVE__MAX_CANDIDATES"),
    ("/v1/rerank", {"history": [{"item_id": "a"}] * 4, "candidates": ["a"]}, "history",
     "P4R_SERVE__MAX_HISTORY"),
    ("/v1/rerank", {"history": [{"item_id": "a", "text": "x" * 101}], "candidates": ["a"]},
     "history[0].text", "P4R_SERVE__MAX_TEXT_CHARS"),
    ("/v1/interactions", {"interactions": [{"user_id": "u", "item_id": "a",
                                            "timestamp": 1}] * 4},
     "interactions", "P4R_SERVE__MAX_INTERACTIONS"),
    ("/v1/interactions", {"interactions": [{"user_id": "u", "item_id": "a", "timestamp": 1,
                                            "text": "x" * 101}]},
     "interactions[0].text", "P4R_SERVE__MAX_TEXT_CHARS"),
])
def test_requests_over_a_limit_answer_413_naming_field_and_setting(
        demo_settings: Settings, path: str, body: dict[str, Any], field: str,
        setting: str) -> None:
    settings = serve_with(demo_settings, max_candidates=5, max_batch=3, max_history=3,
                          max_interactions=3, max_text_chars=100, allow_anonymous_writes=True)
    with local_client(create_app(settings, "demo")) as client:
        answer = client.post(path, json=body)
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert error["code"] == "payload_too_large" and error["field"] == field
    assert setting in error["message"]
    assert ("request_index" in error) == field.startswith("requests[")


def test_the_schemas_own_bounds_answer_413_too(client: TestClient) -> None:
    answer = client.post("/v1/rerank", json={"user_id": "u-ben",
                                             "candidates": ["a"] * 10_001})
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "payload_too_large"


# -- docs and metrics ----------------------------------------------------------------------------
def test_docs_work_offline(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
        assert urls, page
        assert all(u.startswith("/") for u in urls), (page, urls)
        for url in urls:
            assert client.get(url).status_code == 200, url
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert len(bundle.content) > 100_000


def test_metrics_label_every_route_and_describe_the_process(demo_settings: Settings) -> None:
    settings = serve_with(demo_settings, read_only_api_key=SecretStr("r-key-0123456789"))
    with local_client(create_app(settings, "demo")) as client:
        key = {"api-key": "r-key-0123456789"}
        client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS}, headers=key)
        client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS})  # no key
        client.post("/v1/rerank/batch", json={"requests": [
            {"user_id": "u-ben", "candidates": CANDS}]}, headers=key)
        client.get("/v1/items/tide-sushi/personas", headers=key)
        client.get("/docs")
        client.get("/openapi.json")
        text = client.get("/metrics").text
    for labels in ('method="POST",route="/v1/rerank",status="200"',
                   'method="POST",route="/v1/rerank",status="401"',
                   'method="POST",route="/v1/rerank/batch",status="200"',
                   'method="GET",route="/v1/items/{item_id}/personas",status="200"',
                   'method="GET",route="/docs",status="200"',
                   'method="GET",route="/openapi.json",status="200"'):
        assert metric(text, f"p4r_http_requests_total{{{labels}}}") == 1.0, labels
    assert metric(text, "process_resident_memory_bytes") > 1e6
    assert "process_cpu_seconds_total" in text and "python_gc_objects_collected_total" in text


def test_live_timestamps_follow_the_one_rule(client: TestClient) -> None:
    """Live interactions read timestamps as files and histories do: ``Date.now()``
    milliseconds are the same instant as seconds, and out-of-range values are refused."""
    def post(timestamp: Any) -> Any:
        return client.post("/v1/interactions", json={"interactions": [
            {"user_id": "u-ben", "item_id": "cafe-lumen", "timestamp": timestamp}]})

    for bad in (1e300, 1e15 * 1000, -1, "soon", True):
        refused = post(bad)
        assert refused.status_code == 422, bad
        assert refused.json()["error"]["field"] == "interactions[0].timestamp"
    assert post(1_750_000_000_000).json()["accepted"] == 1  # milliseconds
    assert post(1_750_000_000).json() == {"accepted": 0, "duplicates": 1, "users": ["u-ben"],
                                          "version": 1}  # the same instant, in seconds
    assert post("2025-06-15T15:06:40Z").json()["duplicates"] == 1
    newest = client.get("/v1/users/u-ben").json()["interactions"][-1]
    assert newest == {"item_id": "cafe-lumen", "timestamp": 1_750_000_000.0}


QDRANT_URL = "http://user:pw@10.1.2.3:6333/?api-key=SECRET"


def test_a_5xx_body_names_no_qdrant_host_and_no_secret(tiny_settings: Settings) -> None:
    """The failure is made up in process (nothing is sent to 10.1.2.3): what matters is what
    the body may say. The real-process test in test_hardening does it with a real client."""
    from p4r.errors import BackendError, mask_credentials
    from p4r.query import Reranker

    settings = tiny_settings.model_copy(update={"qdrant": tiny_settings.qdrant.model_copy(
        update={"url": QDRANT_URL})})

    def unreachable(_: Settings, __: str) -> Reranker:
        raise BackendError(f"get aliases on Qdrant at {mask_credentials(QDRANT_URL)} failed: "
                           "[Errno 111] connection refused (10.1.2.3:6333)")

    def broken(_: Settings, __: str) -> Reranker:
        raise RuntimeError(f"unexpected state talking to {QDRANT_URL}")

    for opener in (unreachable, broken):
        with local_client(create_app(settings, "demo", opener=opener),
                          raise_server_exceptions=False) as client:
            answers = [client.get("/readyz"),
                       client.post("/v1/rerank", json={"user_id": "u", "candidates": ["a"]})]
        for answer in answers:
            assert answer.status_code == 503
            for hidden in ("SECRET", "pw", "10.1.2.3", "6333"):
                assert hidden not in answer.text, (hidden, answer.text)
        message = answers[1].json()["error"]["message"]
        assert message == answers[0].json()["error"]
        assert ("<qdrant>" in message) if opener is unreachable else message.startswith(
            "internal error (RuntimeError)")


def test_a_bug_answers_500_internal_without_its_text(demo_settings: Settings) -> None:
    with local_client(create_app(demo_settings, "demo"),
                      raise_server_exceptions=False) as client:
        reranker = client.app.state.p4r.reranker  # type: ignore[attr-defined]

        async def bug(*_: Any, **__: Any) -> Any:
            raise KeyError(f"token for {QDRANT_URL}")

        reranker.arerank_batch = bug  # the route awaits the async path
        answer = client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS})
    assert answer.status_code == 500
    assert answer.json() == {"error": {"code": "internal", "message": "internal error "
                                       "(KeyError); the server log has the details"}}
