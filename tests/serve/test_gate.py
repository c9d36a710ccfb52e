"""The gate in front of every route: trusted hosts, keys (Qdrant's model), CORS, body size and
path encoding, in process."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr

from p4r.errors import ConfigError
from p4r.serve.app import create_app
from p4r.serve.gate import Access, access_of, load_keys
from p4r.serve.metrics import leaf_routes
from p4r.settings import ServeSettings, Settings
from tests.serve.conftest import LOCAL, local_client

CANDS = ["tide-sushi", "cafe-lumen", "taqueria-sol"]
WRITE, READ = "w-key-0123456789", "r-key-0123456789"


def serve_with(settings: Settings, **serve: Any) -> Settings:
    """``settings`` with some serve settings changed."""
    return settings.model_copy(update={"serve": settings.serve.model_copy(update=serve)})


@pytest.fixture
def keyed(demo_settings: Settings) -> Iterator[TestClient]:
    """The demo served with a read-write and a read-only key."""
    settings = serve_with(demo_settings, api_key=SecretStr(WRITE),
                          read_only_api_key=SecretStr(READ))
    with local_client(create_app(settings, "demo")) as client:
        yield client


def error(response: Any) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


# -- which routes need what ----------------------------------------------------------------------
WRITES = {"add_interactions", "forget_user"}


def test_every_route_is_classified_by_what_it_needs(client: TestClient) -> None:
    """The gate classifies by method and path before routing; this keeps it in step with the
    routes: writes need the write key, every other /v1/ route a key, the rest none."""
    seen = set()
    for route in leaf_routes(client.app.routes):  # type: ignore[attr-defined]
        if not isinstance(route, APIRoute):
            continue
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        for method in route.methods:
            access = access_of(method, path)
            if route.operation_id in WRITES:
                assert access is Access.WRITE, route.path
            elif route.path.startswith("/v1/"):
                assert access is Access.READ, route.path
            else:
                assert access is Access.PUBLIC, route.path
            seen.add(route.operation_id or route.path)
    assert {"rerank", "rerank_batch", "add_interactions", "forget_user", "get_user",
            "get_item_personas", "list_users", "list_items", "healthz", "readyz",
            "metrics"} <= seen
    assert access_of("GET", "/metrics", metrics_require_key=True) is Access.READ


# -- keys ----------------------------------------------------------------------------------------
def test_reads_need_a_valid_key_once_keys_are_set(keyed: TestClient) -> None:
    body = {"user_id": "u-ben", "candidates": CANDS}
    missing = keyed.post("/v1/rerank", json=body)
    assert error(missing)[:2] == (401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "api-key" in error(missing)[2]
    assert error(keyed.post("/v1/rerank", json=body, headers={"api-key": "guess"}))[:2] == (
        401, "unauthorized")
    assert error(keyed.get("/v1/users/u-ben", headers={"authorization": "Basic abc"}))[:2] == (
        401, "unauthorized")
    for headers in ({"api-key": READ}, {"authorization": f"Bearer {READ}"},
                    {"api-key": WRITE}, {"Authorization": f"bearer {WRITE}"}):
        assert keyed.post("/v1/rerank", json=body, headers=headers).status_code == 200, headers
    # No key needed: liveness, readiness, metrics, the contract and the pages.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc", "/",
                 "/explorer.js", "/docs/assets/swagger-ui.css"):
        assert keyed.get(path).status_code == 200, path


def test_writes_need_the_read_write_key(keyed: TestClient) -> None:
    new = {"interactions": [{"user_id": "u-ben", "item_id": "tide-sushi",
                             "timestamp": 1.75e9, "text": "Superb."}]}
    status, code, message = error(keyed.post("/v1/interactions", json=new,
                                             headers={"api-key": READ}))
    assert (status, code) == (403, "forbidden") and "read-only" in message
    assert error(keyed.delete("/v1/users/u-ana", headers={"api-key": READ}))[:2] == (
        403, "forbidden")
    assert error(keyed.post("/v1/interactions", json=new))[:2] == (401, "unauthorized")
    added = keyed.post("/v1/interactions", json=new, headers={"api-key": WRITE})
    assert added.status_code == 200 and added.json()["accepted"] == 1

    forgot = keyed.delete("/v1/users/u-ana", headers={"authorization": f"Bearer {WRITE}"})
    assert forgot.status_code == 200
    report = forgot.json()
    assert report["user_id"] == "u-ana" and report["dataset"] == "demo"
    assert report["interactions"] > 0 and report["already_forgotten"] is False
    assert report["version"] == 1
    gone = keyed.get("/v1/users/u-ana", headers={"api-key": READ})
    assert error(gone)[:2] == (404, "unknown_user")
    again = keyed.delete("/v1/users/u-ana", headers={"api-key": WRITE}).json()
    assert again["already_forgotten"] is True and again["interactions"] == 0
    refused = keyed.post("/v1/interactions", headers={"api-key": WRITE}, json={
        "interactions": [{"user_id": "u-ana", "item_id": "tide-sushi", "timestamp": 1.75e9}]})
    assert error(refused)[:2] == (409, "forgotten_user")
    assert refused.json()["error"]["field"] == "interactions[0].user_id"


def test_without_a_write_key_writes_are_off_and_say_how_to_turn_them_on(
        demo_settings: Settings) -> None:
    new = {"interactions": [{"user_id": "u-ben", "item_id": "tide-sushi", "timestamp": 1.75e9}]}
    with local_client(create_app(demo_settings, "demo")) as client:
        assert client.post("/v1/rerank", json={"user_id": "u-ben",
                                               "candidates": CANDS}).status_code == 200
        status, code, message = error(client.post("/v1/interactions", json=new))
        assert (status, code) == (403, "forbidden")
        assert "set P4R_SERVE__API_KEY" in message
        assert error(client.delete("/v1/users/u-ben"))[:2] == (403, "forbidden")
    read_only = serve_with(demo_settings, read_only_api_key=SecretStr(READ))
    with local_client(create_app(read_only, "demo")) as client:
        assert error(client.post("/v1/interactions", json=new,
                                 headers={"api-key": READ}))[:2] == (403, "forbidden")
    anonymous = serve_with(demo_settings, allow_anonymous_writes=True)
    with local_client(create_app(anonymous, "demo")) as client:
        assert client.post("/v1/interactions", json=new).status_code == 200


def test_metrics_can_require_the_read_key(demo_settings: Settings) -> None:
    settings = serve_with(demo_settings, read_only_api_key=SecretStr(READ),
                          metrics_require_key=True)
    with local_client(create_app(settings, "demo")) as client:
        assert error(client.get("/metrics"))[:2] == (401, "unauthorized")
        assert client.get("/metrics", headers={"api-key": READ}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_keys_come_from_files_and_bad_ones_are_refused_at_start(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(f"{WRITE}\n")
    keys = load_keys(ServeSettings(api_key_file=key_file, read_only_api_key=SecretStr(READ)))
    assert (keys.write, keys.read) == (WRITE.encode(), READ.encode())
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cases = [
        (ServeSettings(api_key=SecretStr(WRITE), api_key_file=key_file),
         "set P4R_SERVE__API_KEY or P4R_SERVE__API_KEY_FILE, not both"),
        (ServeSettings(api_key_file=empty), "P4R_SERVE__API_KEY_FILE="),
        (ServeSettings(read_only_api_key_file=tmp_path / "missing"),
         "cannot read P4R_SERVE__READ_ONLY_API_KEY_FILE="),
        (ServeSettings(api_key=SecretStr(WRITE), read_only_api_key=SecretStr(WRITE)),
         "are the same key"),
        (ServeSettings(api_key=SecretStr("  ")), "P4R_SERVE__API_KEY is empty"),
    ]
    for serve, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            load_keys(serve)
        assert WRITE not in str(info.value)


# -- hosts, origins ------------------------------------------------------------------------------
def test_only_trusted_host_headers_are_answered(demo_settings: Settings) -> None:
    with local_client(create_app(demo_settings, "demo")) as client:
        status, code, message = error(client.get("/healthz", headers={"host": "evil.example"}))
        assert (status, code) == (400, "untrusted_host")
        assert "P4R_SERVE__TRUSTED_HOSTS" in message
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
            assert client.get("/healthz", headers={"host": host}).status_code == 200, host
    wild = serve_with(demo_settings, trusted_hosts=["*.example.com", "api.test"])
    with TestClient(create_app(wild, "demo"), base_url="http://api.example.com:8443") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz", headers={"host": "api.test"}).status_code == 200
        assert client.get("/healthz", headers={"host": "example.org"}).status_code == 400
        assert client.get("/healthz", headers={"host": "localhost"}).status_code == 400
    anything = serve_with(demo_settings, trusted_hosts=["*"])
    with TestClient(create_app(anything, "demo"), base_url="http://whatever") as client:
        assert client.get("/healthz").status_code == 200


def test_cors_answers_only_configured_origins(demo_settings: Settings) -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "api-key,content-type"}
    with local_client(create_app(demo_settings, "demo")) as client:
        plain = client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS},
                            headers={"origin": "https://app.example"})
        assert "access-control-allow-origin" not in plain.headers
    settings = serve_with(demo_settings, cors_origins=["https://app.example"],
                          api_key=SecretStr(WRITE))
    with local_client(create_app(settings, "demo")) as client:
        allowed = client.options("/v1/rerank", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "api-key" in allowed.headers["access-control-allow-headers"].lower()
        other = client.options("/v1/rerank", headers={**preflight, "origin": "https://evil.io"})
        assert other.status_code == 400
        answer = client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS},
                             headers={"origin": "https://app.example", "api-key": WRITE})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://app.example"


# -- body size, path encoding --------------------------------------------------------------------
def test_a_body_over_the_limit_is_refused_before_it_is_read(demo_settings: Settings) -> None:
    settings = serve_with(demo_settings, max_body_bytes=4096)
    big = b'{"user_id": "u-ben", "candidates": [' + b'"x",' * 3000 + b'"y"]}'
    with local_client(create_app(settings, "demo")) as client:
        declared = client.post("/v1/rerank", content=big,
                               headers={"content-type": "application/json"})
        status, code, message = error(declared)
        assert (status, code) == (413, "payload_too_large")
        assert message == (f"{len(big):,} bytes is over the limit of 4,096 bytes "
                           "(P4R_SERVE__MAX_BODY_BYTES)")
        assert declared.headers["connection"] == "close"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
            for start in range(0, len(big), 1000):
                yield big[start:start + 1000]

        streamed = client.post("/v1/rerank", content=chunks(),
                               headers={"content-type": "application/json"})
        assert error(streamed)[:2] == (413, "payload_too_large")
        fits = client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS})
        assert fits.status_code == 200


@pytest.mark.parametrize("path", ["/v1/users/%ED%A0%80", "/v1/items/%FF%FE/personas",
                                  "/v1/users/a%C3"])
def test_a_path_that_is_not_utf8_answers_400(client: TestClient, path: str) -> None:
    status, code, message = error(client.get(path))
    assert (status, code) == (400, "bad_input") and "UTF-8" in message


def test_invalid_unicode_ids_answer_400_naming_the_field(client: TestClient) -> None:
    raw = b'{"user_id": "u-ben", "candidates": ["tide-sushi", "x\\ud800"]}'
    status, code, message = error(client.post("/v1/rerank", content=raw,
                                              headers={"content-type": "application/json"}))
    assert (status, code) == (400, "bad_input")
    assert message.startswith("field 'candidates[1]': a lone surrogate")
    raw = b'{"interactions": [{"user_id": "\\udfff", "item_id": "a", "timestamp": 1}]}'
    answer = client.post("/v1/interactions", content=raw,
                         headers={"content-type": "application/json"})
    assert error(answer)[:2] == (400, "bad_input")
    assert answer.json()["error"]["field"] == "interactions[0].user_id"
    # Percent-encoded valid UTF-8 is an id like any other.
    assert error(client.get("/v1/users/caf%C3%A9"))[:2] == (404, "unknown_user")


def test_the_client_default_host_is_refused(demo_settings: Settings) -> None:
    """TestClient's own ``testserver`` is not a loopback name: the fixtures send localhost."""
    with TestClient(create_app(demo_settings, "demo")) as client:
        assert client.get("/healthz").status_code == 400
    assert LOCAL == "http://localhost"
