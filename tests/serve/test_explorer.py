"""The explorer: the routes it reads (item details, a readable history), and the page itself
in real headless Chromium (Debian's system binary) against a live server."""

from __future__ import annotations

import copy
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from p4r.datasets.models import Item, Persona
from p4r.query import Reranker
from p4r.query.calls import run
from p4r.serve import browse
from p4r.settings import Settings
from p4r.store.base import Backend
from tests.conftest import upsert
from tests.serve.conftest import LiveServer, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
CANDS = ["tide-sushi", "polar-scoop-gelato", "cafe-lumen", "noodle-harbor", "taqueria-sol",
         "green-fern-bistro"]


# -- the routes the page reads -------------------------------------------------------------------
def test_lookup_answers_titles_and_summaries_in_the_order_asked(client: TestClient,
                                                                 demo_dataset) -> None:  # type: ignore[no-untyped-def]
    asked = ["tide-sushi", "ghost-kitchen", "polar-scoop-gelato", "tide-sushi"]
    answer = client.get("/v1/items/lookup", params=[("ids", i) for i in asked])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body == {"items": [
        {"item_id": i, "title": demo_dataset.items[i].title,
         "summary": demo_dataset.items[i].summary} for i in ("tide-sushi", "polar-scoop-gelato")],
        "not_found": ["ghost-kitchen"], "version": 1}
    # Bounded, with the usual error shapes.
    too_many = client.get("/v1/items/lookup", params=[("ids", f"i{n}") for n in range(201)])
    assert too_many.status_code == 413
    assert too_many.json()["error"]["code"] == "payload_too_large"
    assert too_many.json()["error"]["field"] == "ids"
    none = client.get("/v1/items/lookup")
    assert (none.status_code, none.json()["error"]["code"]) == (422, "bad_input")


def test_lookup_reads_an_overlay_then_its_base(backend: Backend, demo_dataset,  # type: ignore[no-untyped-def]
                                               tiny_encoder) -> None:
    """A catalog delta (an overlay version on Edge): changed and new items come from it, the
    others from the base, and a removed item is not found although its base still has it."""
    upsert(demo_dataset, backend, tiny_encoder)
    changed = copy.deepcopy(demo_dataset)
    changed.personas.pop("the-copper-still")
    changed.items.pop("the-copper-still")
    noodle = changed.items["noodle-harbor"]
    changed.items["noodle-harbor"] = replace(noodle, summary=noodle.summary + " Now open late.")
    changed.items["lantern-ramen"] = Item("lantern-ramen", "Lantern Ramen",
                                          "A small ramen bar with rich tonkotsu broth.")
    changed.personas["lantern-ramen"] = [Persona("lantern-ramen", "P1", "Broth Devotee",
                                                 "Judges a bowl by its broth.", "Rich tonkotsu.")]
    assert upsert(changed, backend, tiny_encoder, delta_limit=0.5).action == "delta"
    asked = ["noodle-harbor", "lantern-ramen", "tide-sushi", "the-copper-still"]
    body = run(browse.lookup(Reranker("demo", backend), asked))
    assert {i["item_id"]: i["summary"] for i in body["items"]} == {
        i: changed.items[i].summary for i in asked[:3]}
    assert body["not_found"] == ["the-copper-still"]


def test_history_is_readable_and_bounded(client: TestClient, demo_dataset) -> None:  # type: ignore[no-untyped-def]
    live = {"user_id": "u-chloe", "item_id": "tide-sushi", "timestamp": 1.75e9, "rating": 5,
            "text": "Gorgeous nigiri."}
    assert client.post("/v1/interactions", json={"interactions": [live]}).status_code == 200
    answer = client.get("/v1/users/u-chloe/history", params={"limit": 3})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    chloe = sorted((i for i in demo_dataset.interactions if i.user_id == "u-chloe"),
                   key=lambda i: (i.timestamp, i.item_id))
    assert body["count"] == len(chloe) + 1 and body["last_n"] == 10 and body["version"] == 1
    assert body["seen"] == sorted({i.item_id for i in chloe} | {"tide-sushi"})
    assert [(e["item_id"], e["title"], e["text"], e["rating"], e["origin"], e["in_profile"])
            for e in body["interactions"]] == [
        (i.item_id, demo_dataset.items[i.item_id].title, i.text, i.rating, "file", True)
        for i in chloe[-2:]] + [("tide-sushi", "Tide Sushi", "Gorgeous nigiri.", 5.0, "live",
                                 True)]
    assert body["interactions"][-1]["timestamp"] == 1.75e9
    assert client.get("/v1/users/u-chloe/history?limit=201").status_code == 422
    unknown = client.get("/v1/users/nobody/history")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_user")


# -- the page ------------------------------------------------------------------------------------
@pytest.fixture
def browser_page(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A page of a fresh headless Chromium profile (the system binary; nothing downloaded)."""
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=FLAGS, viewport={"width": 1400, "height": 900})
        try:
            page = context.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            context.close()


@pytest.fixture
def server(demo_settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    live = start_server(tmp_path, "--dataset", "demo", "--allow-anonymous-writes")
    yield live
    stop_server(live)


def test_explorer_shows_history_and_reranked_personas(browser_page, server: LiveServer,  # type: ignore[no-untyped-def]
                                                      demo_dataset, tmp_path: Path) -> None:
    page = browser_page
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-loaded=true]")
    assert page.text_content("[data-testid=status]") == "dataset demo · version 1"

    # Pick a user: the history shows their interactions, oldest first, with item titles,
    # including one that arrived live through the API.
    live = {"user_id": "u-chloe", "item_id": "tide-sushi", "timestamp": 1.75e9,
            "text": "Gorgeous nigiri."}
    assert server.request("POST", "/v1/interactions", {"interactions": [live]})[0] == 200
    page.fill("#user-id", "u-chloe")
    page.click("#load-user")
    page.wait_for_selector("#history li")
    chloe = sorted((i for i in demo_dataset.interactions if i.user_id == "u-chloe"),
                   key=lambda i: (i.timestamp, i.item_id))
    shown = page.locator("#history li").all_text_contents()
    expected_ids = [i.item_id for i in chloe] + ["tide-sushi"]
    assert len(shown) == len(expected_ids)
    for text, item_id in zip(shown, expected_ids, strict=True):
        assert text.startswith(f"{demo_dataset.items[item_id].title} ({item_id})"), text
    assert shown[-1].endswith("2025-06-15")  # 1.75e9 s (input18 moved it from 2030)
    assert page.text_content("#history-note") == "1 of them arrived after version 1 was built"

    # Paste candidates, pick one more from the list, rerank.
    page.fill("#candidates", ", ".join(CANDS[:-1]))
    page.select_option("#item-pick", CANDS[-1])
    page.click("#add-item")
    assert page.input_value("#candidates").split("\n") == CANDS
    page.click("#rerank")
    page.wait_for_selector("#results tbody tr")

    status, answer = server.request("POST", "/v1/rerank",
                                    {"user_id": "u-chloe", "candidates": CANDS})
    assert status == 200
    expected = answer["items"]
    rows = page.locator("#results tbody tr")
    assert rows.count() == len(expected)
    for index, item in enumerate(expected):
        cells = rows.nth(index).locator("td")
        assert rows.nth(index).get_attribute("data-item-id") == item["item_id"]
        assert cells.nth(2).text_content() == f"{item['score']:.4f}"
        assert cells.nth(3).text_content() == item["explanation"]
        persona = item["persona"]
        if persona is None:
            assert cells.nth(4).text_content() == ""
        else:
            assert cells.nth(4).locator(".persona-name").text_content() == persona["name"]
            assert (cells.nth(4).locator(".persona-description").text_content()
                    == persona["description"])
            assert (cells.nth(4).locator(".persona-rationale").text_content()
                    == persona["rationale"])
    assert page.is_hidden("[data-testid=error]")
    page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)

    # An unknown candidate shows the API's one-line error and clears the list.
    page.fill("#candidates", "tide-sushi\nghost-kitchen")
    page.click("#rerank")
    page.wait_for_selector("[data-testid=error]:not([hidden])")
    _, refused = server.request("POST", "/v1/rerank",
                                {"user_id": "u-chloe", "candidates": ["tide-sushi",
                                                                      "ghost-kitchen"]})
    assert page.text_content("[data-testid=error]") == "Error: " + refused["error"]["message"]
    assert page.locator("#results tbody tr").count() == 0
