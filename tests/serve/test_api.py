"""The HTTP API in process: answers, error mapping, readiness, reload, metrics, OpenAPI.

Issue 18 changed two contracts, and these tests follow: ``POST /v1/rerank`` answers one object
(``items`` is what the CLI prints) and batches moved to ``POST /v1/rerank/batch``; errors answer
``{"error": {"code", "message", ...}}`` instead of ``{"error": message}``."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from p4r.datasets.models import Persona
from p4r.query import Reranker
from p4r.serve.app import create_app
from p4r.settings import EncoderSettings, Settings
from p4r.store import open_backend
from tests.conftest import upsert
from tests.serve.conftest import local_client

CANDS = ["tide-sushi", "polar-scoop-gelato", "cafe-lumen", "noodle-harbor", "taqueria-sol"]


def cli(*args: str) -> tuple[int, str]:
    from p4r.cli.query import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_rerank_answers_what_the_cli_prints(demo_settings: Settings) -> None:
    with local_client(create_app(demo_settings, "demo")) as client:
        answer = client.post("/v1/rerank", json={"user_id": "u-chloe", "candidates": CANDS})
        unknown = client.post("/v1/rerank", json={"user_id": "u-chloe",
                                                  "candidates": ["tide-sushi", "ghost"]})
        k2 = client.post("/v1/rerank", json={"user_id": "u-chloe", "candidates": CANDS, "k": 2})
    # The server has stopped and released the store: the CLI can open it now.
    code, printed = cli("rerank", "-d", "demo", "-u", "u-chloe", "-c", ",".join(CANDS), "--json")
    assert code == 0
    assert answer.status_code == 200
    assert answer.json()["items"] == json.loads(printed)
    assert {k: v for k, v in answer.json().items() if k != "items"} == {
        "user_id": "u-chloe", "unknown": [], "unscored": [], "version": 1}
    assert [r["explanation"] for r in answer.json()["items"]].count("summary") == 1
    assert k2.json()["items"] == answer.json()["items"][:2]

    code, printed = cli("rerank", "-d", "demo", "-u", "u-chloe", "-c", "tide-sushi,ghost")
    assert code == 1
    assert unknown.status_code == 400
    error = unknown.json()["error"]
    assert printed.strip() == "Error: " + error["message"]
    assert error == {"code": "unknown_candidates", "message": error["message"],
                     "field": "candidates", "unknown": ["ghost"]}


def test_batch_answers_each_request_in_order(client: TestClient) -> None:
    users = ["u-ana", "u-ben", "u-chloe", "u-dev"]
    batch = client.post("/v1/rerank/batch", json={"requests": [
        {"user_id": u, "candidates": [*CANDS, "ghost"], "allow_unknown": True} for u in users]})
    assert batch.status_code == 200
    assert batch.json()["version"] == 1
    results = batch.json()["results"]
    assert [r["user_id"] for r in results] == users
    for user, result in zip(users, results, strict=True):
        single = client.post("/v1/rerank", json={"user_id": user, "candidates": [*CANDS, "ghost"],
                                                 "allow_unknown": True}).json()
        assert result == {k: v for k, v in single.items() if k != "version"}
        assert result["unknown"] == ["ghost"]
        assert single["items"][-1] == {"item_id": "ghost", "score": None,
                                       "explanation": "unscored", "persona": None,
                                       "because": None}

    strict = client.post("/v1/rerank/batch", json={"requests": [
        {"user_id": "u-ana", "candidates": CANDS},
        {"user_id": "u-ben", "candidates": ["cafe-lumen", "ghost"]}]})
    assert strict.status_code == 400
    assert strict.json()["error"] == {
        "code": "unknown_candidates", "request_index": 1, "field": "requests[1].candidates",
        "unknown": ["ghost"], "message": ("field 'requests[1].candidates': 1 candidate(s) "
                                          "unknown to dataset 'demo': ghost")}

    nobody = client.post("/v1/rerank/batch", json={"requests": [
        {"user_id": "u-ana", "candidates": CANDS}, {"user_id": "nobody", "candidates": CANDS}]})
    assert nobody.status_code == 404
    assert nobody.json()["error"] == {
        "code": "unknown_user", "request_index": 1, "field": "requests[1].user_id",
        "message": "user 'nobody' has no interactions in dataset 'demo'"}


def test_mode_and_diversify_reach_the_library_on_both_routes(client: TestClient) -> None:
    """A request's ``mode`` and ``diversify`` answer what the library answers with them
    (because included); an unknown value is refused by the schema."""
    reranker: Reranker = client.app.state.p4r.reranker  # type: ignore[attr-defined]
    for mode, diversify, k in (("interests", None, None), ("default", "proportional", 3),
                               ("interests", "proportional", 2)):
        body = {"user_id": "u-chloe", "candidates": CANDS, "mode": mode, "k": k,
                **({"diversify": diversify} if diversify else {})}
        want = reranker.rerank(user_id="u-chloe", candidates=CANDS, mode=mode,
                               diversify=diversify, k=k)
        single = client.post("/v1/rerank", json=body)
        assert single.status_code == 200, single.text
        assert single.json()["items"] == [item.as_dict() for item in want.items]
        assert any(item["because"] for item in single.json()["items"])
        batch = client.post("/v1/rerank/batch", json={"requests": [body]})
        assert batch.json()["results"][0]["items"] == single.json()["items"]
    plain = client.post("/v1/rerank", json={"user_id": "u-chloe", "candidates": CANDS}).json()
    attended = client.post("/v1/rerank", json={"user_id": "u-chloe", "candidates": CANDS,
                                               "mode": "interests"}).json()
    assert plain["items"] != attended["items"], "the mode changes the answer"
    for field, value in (("mode", "telepathy"), ("diversify", "random")):
        refused = client.post("/v1/rerank", json={"user_id": "u-chloe", "candidates": CANDS,
                                                  field: value})
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "bad_input"
        assert field in refused.json()["error"]["message"]
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert set(schemas["RerankIn"]["properties"]) >= {"mode", "diversify"}
    assert "because" in schemas["RankedItemOut"]["properties"]


def test_history_and_vector_requests(client: TestClient, demo_dataset) -> None:  # type: ignore[no-untyped-def]
    history = [{"item_id": i.item_id, "timestamp": i.timestamp, "text": i.text,
                "aspects": i.aspects} for i in demo_dataset.interactions if i.user_id == "u-chloe"]
    by_user = client.post("/v1/rerank", json={"user_id": "u-chloe", "candidates": CANDS}).json()
    by_history = client.post("/v1/rerank", json={"history": history, "candidates": CANDS})
    assert by_history.status_code == 200
    assert [r["item_id"] for r in by_history.json()["items"]] == [
        r["item_id"] for r in by_user["items"]]
    assert [r["score"] for r in by_history.json()["items"]] == pytest.approx(
        [r["score"] for r in by_user["items"]], abs=1e-5)

    reranker: Reranker = client.app.state.p4r.reranker  # type: ignore[attr-defined]
    vector = reranker.user_vector("u-chloe").tolist()
    by_vector = client.post("/v1/rerank", json={"vector": vector, "candidates": CANDS}).json()
    assert [r["item_id"] for r in by_vector["items"]] == [r["item_id"] for r in by_user["items"]]


@pytest.mark.parametrize(("path", "body", "status", "code", "message"), [
    ("/v1/rerank", {"user_id": "nobody", "candidates": ["tide-sushi"]}, 404, "unknown_user",
     "user 'nobody' has no interactions in dataset 'demo'"),
    ("/v1/rerank", {"candidates": ["tide-sushi"]}, 400, "bad_input",
     "field 'user': give exactly one of user_id, history or vector"),
    ("/v1/rerank", {"vector": [0.1] * 32, "history": [{"item_id": "tide-sushi"}],
                    "candidates": ["cafe-lumen"]}, 400, "bad_input",
     "field 'user': give exactly one of user_id, history or vector"),
    ("/v1/rerank", {"user_id": "u-ben"}, 422, "bad_input", "field 'candidates': Field required"),
    ("/v1/rerank", {"user_id": "u-ben", "candidates": []}, 422, "bad_input",
     "field 'candidates': List should have at least 1 item after validation, not 0"),
    ("/v1/rerank/batch", {"requests": [{"user_id": "u-ben", "candidates": ["x"], "colour": 1}]},
     422, "bad_input", "field 'requests[0].colour': Extra inputs are not permitted"),
    ("/v1/rerank", {"requests": [{"user_id": "u-ben", "candidates": ["x"]}]}, 422, "bad_input",
     "field 'candidates': Field required (and 1 more)"),
    ("/v1/rerank", {"vector": [0.5, 0.5], "candidates": ["tide-sushi"]}, 400, "bad_input",
     "field 'vector': has 2 dimensions, the index has 32"),
    ("/v1/rerank", {"history": [{"item_id": "tide-sushi", "timestamp": "soon"}],
                    "candidates": ["cafe-lumen"]},
     422, "bad_input", "field 'history[0].timestamp': unreadable timestamp 'soon' (expected "
     "unix seconds or milliseconds, or an ISO-8601 date such as '2024-01-15T10:10:00Z', from "
     "1970-01-01 to one day from now)"),
])
def test_bad_input_answers_4xx_with_one_line(client: TestClient, path: str, body: dict,
                                             status: int, code: str, message: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert (error["code"], error["message"]) == (code, message)
    assert set(error) <= {"code", "message", "field", "request_index"}


def test_malformed_json_and_unknown_routes(client: TestClient) -> None:
    broken = client.post("/v1/rerank", content=b'{"user_id": ',
                         headers={"content-type": "application/json"})
    assert broken.status_code == 422
    assert broken.json()["error"]["message"].startswith("request body is not valid JSON")
    assert client.get("/v2/nothing").json() == {"error": {"code": "not_found",
                                                          "message": "Not Found"}}
    not_allowed = client.get("/v1/rerank")
    assert not_allowed.status_code == 405
    assert not_allowed.json()["error"]["code"] == "method_not_allowed"


def test_not_indexed_answers_503_until_published(tiny_settings: Settings, demo_dataset,  # type: ignore[no-untyped-def]
                                                  tiny_encoder) -> None:
    with local_client(create_app(tiny_settings, "demo")) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False
        assert ready.json()["code"] == "not_indexed"
        assert "dataset 'demo' is not indexed" in ready.json()["error"]
        refused = client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS})
        assert refused.status_code == 503
        assert refused.json()["error"] == {"code": "not_indexed",
                                           "message": ready.json()["error"]}
        assert "run: p4r index upsert --dataset demo" in refused.json()["error"]["message"]
        assert str(tiny_settings.data_dir) not in refused.text  # no path to anonymous clients
        assert client.get("/healthz").json() == {"status": "ok", "version": None}

        with open_backend(tiny_settings) as store:
            upsert(demo_dataset, store, tiny_encoder)
        ready = wait_for(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        assert ready.json()["version"] == 1
        served = client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS})
        assert served.status_code == 200
        assert client.get("/healthz").json() == {"status": "ok", "version": 1}


def wait_for(probe, done, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Call ``probe`` until ``done(result)``; the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_a_new_version_is_served_after_the_reload_interval(
        tiny_settings: Settings, demo_dataset, tiny_encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = open_backend(tiny_settings)
    upsert(demo_dataset, store, tiny_encoder)

    def opener(settings: Settings, dataset: str) -> Reranker:
        return Reranker(dataset, store, settings.query, settings.encoder)

    with local_client(create_app(tiny_settings, "demo", opener=opener)) as client:
        body = {"user_id": "u-ben", "candidates": ["polar-scoop-gelato", "cafe-lumen"]}
        before = client.post("/v1/rerank", json=body).json()
        assert {r["item_id"]: r["explanation"] for r in before["items"]}[
            "polar-scoop-gelato"] == "summary"
        # Version 2 gives the gelato shop a persona: its explanation changes once it is served.
        demo_dataset.personas["polar-scoop-gelato"] = [Persona(
            item_id="polar-scoop-gelato", persona_id="P1", name="Late-Night Scooper",
            description="Wants dessert after 10pm.",
            rationale="Open until midnight with rotating flavours.")]
        upsert(demo_dataset, store, tiny_encoder)
        ready = wait_for(lambda: client.get("/readyz"), lambda r: r.json()["version"] == 2)
        assert ready.json()["version"] == 2
        after = client.post("/v1/rerank", json=body).json()
        assert (before["version"], after["version"]) == (1, 2)
        gelato = next(r for r in after["items"] if r["item_id"] == "polar-scoop-gelato")
        assert gelato["explanation"] == "persona"
        assert gelato["persona"]["name"] == "Late-Night Scooper"
        metrics = client.get("/metrics").text
        assert "p4r_served_version 2.0" in metrics
        assert metric(metrics, 'p4r_reloads_total{outcome="switched"}') == 2.0


def metric(text: str, sample: str) -> float:
    """Value of one exposition sample line (its name and labels exactly)."""
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match, f"{sample} not in metrics:\n{text}"
    return float(match.group(1))


def test_metrics_count_requests_by_route_and_status(client: TestClient) -> None:
    for _ in range(3):
        client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS})
    client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": ["ghost"]})
    client.get("/v1/users/u-ben")
    client.get("/no/such/page")
    text = client.get("/metrics").text
    assert metric(text, 'p4r_http_requests_total{method="POST",route="/v1/rerank",'
                        'status="200"}') == 3.0
    assert metric(text, 'p4r_http_requests_total{method="POST",route="/v1/rerank",'
                        'status="400"}') == 1.0
    assert metric(text, 'p4r_http_requests_total{method="GET",route="unmatched",'
                        'status="404"}') == 1.0
    assert metric(text, 'p4r_http_request_duration_seconds_count{method="POST",'
                        'route="/v1/rerank"}') == 4.0
    assert metric(text, 'p4r_http_request_duration_seconds_bucket{le="+Inf",method="POST",'
                        'route="/v1/rerank"}') == 4.0
    assert metric(text, "p4r_served_version") == 1.0
    assert any(line.startswith('p4r_http_requests_total{method="GET",route="/v1/users/{user_id}"')
               for line in text.splitlines())


def test_openapi_documents_the_routes(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for path in ("/v1/rerank", "/v1/interactions", "/v1/items/{item_id}/personas",
                 "/v1/users/{user_id}", "/healthz", "/readyz", "/metrics"):
        assert path in doc["paths"], path
    schemas = doc["components"]["schemas"]
    assert {"RerankIn", "RerankBatchIn", "RankedItemOut", "RerankBatchOut", "LiveInteraction",
            "InteractionsAnswer", "UserProfile", "PersonaOut", "ErrorOut"} <= set(schemas)
    rerank = doc["paths"]["/v1/rerank"]["post"]
    assert set(rerank["responses"]) >= {"200", "400", "404", "422", "503"}


def test_explorer_suggestions_and_page(client: TestClient) -> None:
    assert client.get("/v1/users").json() == {"users": ["u-ana", "u-ben", "u-chloe", "u-dev"],
                                              "version": 1}
    items = client.get("/v1/items", params={"limit": 500}).json()["items"]
    ids = [i["item_id"] for i in items]
    assert ids == sorted(ids) and {"tide-sushi", "polar-scoop-gelato"} <= set(ids)
    assert {"item_id": "tide-sushi", "title": "Tide Sushi"} in items
    assert len(client.get("/v1/items", params={"limit": 3}).json()["items"]) == 3
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="explorer.js">' in page.text
    assert "fetch(" in client.get("/explorer.js").text


def test_interactions_are_read_back_at_once_and_repeats_are_no_ops(client: TestClient) -> None:
    before = client.get("/v1/users/u-ben").json()
    assert before["live"] == 0 and before["version"] == 1
    ranked_before = client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS})
    new = {"user_id": "u-ben", "item_id": "tide-sushi", "timestamp": 1.75e9, "rating": 5,
           "text": "The omakase was the best meal of my year."}
    added = client.post("/v1/interactions", json={"interactions": [new]})
    assert added.status_code == 200
    assert added.json() == {"accepted": 1, "duplicates": 0, "users": ["u-ben"], "version": 1}
    after = client.get("/v1/users/u-ben").json()
    assert after["live"] == 1
    assert after["interactions"][-1] == {"item_id": "tide-sushi", "timestamp": 1.75e9}
    assert after["interactions"][:-1] == before["interactions"][-len(after["interactions"]) + 1:]
    ranked_after = client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS})
    assert ranked_after.json() != ranked_before.json()  # the profile moved

    again = client.post("/v1/interactions", json={"interactions": [new]})
    assert again.json() == {"accepted": 0, "duplicates": 1, "users": ["u-ben"], "version": 1}
    assert client.get("/v1/users/u-ben").json() == after

    unknown = client.post("/v1/interactions", json={"interactions": [
        {"user_id": "u-ben", "item_id": "ghost", "timestamp": 1.75e9}]})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "bad_input"
    assert unknown.json()["error"]["field"] == "interactions[0].item_id"
    assert unknown.json()["error"]["message"].startswith(
        "field 'interactions[0].item_id': item 'ghost'")


def test_item_personas_and_unknown_ids(client: TestClient, demo_dataset) -> None:  # type: ignore[no-untyped-def]
    personas = client.get("/v1/items/tide-sushi/personas").json()
    expected = sorted(demo_dataset.personas["tide-sushi"], key=lambda p: p.persona_id)
    assert personas == {"item_id": "tide-sushi", "version": 1, "personas": [
        {"persona_id": p.persona_id, "name": p.name, "description": p.description,
         "rationale": p.rationale} for p in expected]}
    missing = client.get("/v1/items/ghost/personas")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "item 'ghost' has no "
                                                                        "personas in dataset "
                                                                        "'demo'"}}
    nobody = client.get("/v1/users/nobody")
    assert nobody.status_code == 404
    assert nobody.json() == {"error": {"code": "unknown_user", "message": "user 'nobody' has "
                                                                          "no interactions in "
                                                                          "dataset 'demo'"}}


def test_a_failed_reload_keeps_serving_the_loaded_version(client: TestClient) -> None:
    from p4r.errors import DamagedStoreError

    def damaged(_: Reranker | None) -> tuple[str, None, Exception]:
        return "error", None, DamagedStoreError("p4r_demo_personas_v2 holds 3 personas, 34 "
                                                "were recorded")

    state = client.app.state.p4r  # type: ignore[attr-defined]
    state.check = damaged  # the next reload check fails
    ready = wait_for(lambda: client.get("/readyz"), lambda r: r.json()["error"] is not None)
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "dataset": "demo", "version": 1,
                            "collection": "p4r_demo_personas_v1", "code": "unavailable",
                            "error": "p4r_demo_personas_v2 holds 3 personas, 34 were recorded"}
    served = client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS})
    assert served.status_code == 200
    text = client.get("/metrics").text
    assert metric(text, 'p4r_reloads_total{outcome="error"}') >= 1.0
    assert metric(text, "p4r_served_version") == 1.0


def test_a_history_request_without_a_usable_encoder_is_503(tiny_settings: Settings,  # type: ignore[no-untyped-def]
                                                            tiny_models, _demo_dataset,
                                                            tmp_path: Path) -> None:
    from p4r.encoder.model import Encoder
    from p4r.store import open_backend

    built_with = shutil.copytree(tiny_models["a"], tmp_path / "encoder-a")
    with open_backend(tiny_settings) as store:
        upsert(_demo_dataset, store, Encoder(EncoderSettings(model=str(built_with))))
    settings = tiny_settings.model_copy(update={"encoder": tiny_settings.encoder.model_copy(
        update={"model": str(tmp_path / "no-such-encoder")})})
    history = {"history": [{"item_id": "tide-sushi", "text": "Great fish."}],
               "candidates": CANDS}
    with local_client(create_app(settings, "demo")) as client:
        # the index recorded the folder it was built with: history requests find it
        assert client.post("/v1/rerank", json=history).status_code == 200
    shutil.rmtree(built_with)
    with local_client(create_app(settings, "demo")) as client:
        by_user = client.post("/v1/rerank", json={"user_id": "u-ben", "candidates": CANDS})
        assert by_user.status_code == 200  # profiles need no encoder
        by_history = client.post("/v1/rerank", json=history)
    assert by_history.status_code == 503
    error = by_history.json()["error"]
    assert error["code"] == "unavailable"
    # The setting to change, without the server's folders (the log has the full path).
    assert f"set P4R_ENCODER__MODEL={built_with.name}" in error["message"]
    assert str(tmp_path) not in by_history.text


