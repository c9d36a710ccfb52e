"""The explorer: the routes it reads (item details, a readable history), and the page itself
in real headless Chromium (Debian's system binary) against a live server."""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import replace
from datetime import UTC, datetime
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


WRITE, READ = "explorer-write-key-0001", "explorer-read-key-0001"


@pytest.fixture
def server(demo_settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The demo served with a read-write and a read-only key (every /v1/ route needs one)."""
    live = start_server(tmp_path, "--dataset", "demo", key=WRITE,
                        env={"P4R_SERVE__API_KEY": WRITE, "P4R_SERVE__READ_ONLY_API_KEY": READ})
    yield live
    stop_server(live)


def idle(page) -> None:  # type: ignore[no-untyped-def]
    """Wait until the page has no request in flight (it keeps body[data-idle] up to date)."""
    page.wait_for_selector("body[data-idle=true]", state="attached")


def use_key(page, key: str) -> None:  # type: ignore[no-untyped-def]
    page.fill("#api-key", key)
    page.click("#save-key")
    idle(page)


def texts(page, selector: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [t.strip() for t in page.locator(selector).all_text_contents()]


def check_results(page, answer: dict, demo_dataset, seen: set[str]) -> None:  # type: ignore[no-untyped-def]
    """The reranked list shows the API's answer by name, with the score explained in one
    line, the persona as the user's closest match, summaries, marks and because-lines."""
    rows = page.locator("#results > li")
    assert rows.count() == len(answer["items"])
    for index, item in enumerate(answer["items"]):
        row = rows.nth(index)
        item_id = item["item_id"]
        title = demo_dataset.items[item_id].title
        assert row.get_attribute("data-item-id") == item_id
        assert row.locator(".rank").text_content() == f"{index + 1}."
        assert row.locator("button.item-title").text_content() == title
        assert row.locator(".item-id").text_content() == item_id
        assert row.locator(".badge").text_content() == item["explanation"]
        marks = row.locator(".mark.seen")
        assert marks.count() == (1 if item_id in seen else 0), item_id
        if item_id in seen:
            assert marks.text_content() == "✓ in your history"  # words, not a colour
        line = row.locator(".score-line").text_content()
        kind = {"persona": "this persona",
                "summary": "the item's summary (it has no personas)"}[item["explanation"]]
        assert line == f"{item['score']:.4f} — cosine between your profile and {kind}", line
        summary = demo_dataset.items[item_id].summary
        if item["explanation"] == "persona":
            persona = item["persona"]
            assert row.locator(".persona-label").text_content() == (
                "The persona that matches you best")
            assert row.locator(".persona-name").text_content() == persona["name"]
            assert row.locator(".persona-description").text_content() == persona["description"]
            assert row.locator(".persona-rationale").text_content() == (
                "Their experience here: " + persona["rationale"])
            assert row.locator(".item-summary").text_content() == summary  # under "About"
        else:  # scored by its summary: the text it was scored by, shown
            assert row.locator(".persona-label").text_content() == (
                "No personas: scored by its summary")
            assert row.locator(".summary-text").text_content() == summary
        because = item.get("because")
        if because:
            assert row.locator(".because").text_content() == because_line(because, demo_dataset)
        else:
            assert row.locator(".because").count() == 0


def because_line(because: dict, demo_dataset) -> str:  # type: ignore[no-untyped-def]
    when = datetime.fromtimestamp(because["timestamp"], UTC).strftime("%Y-%m-%d")
    return (f"Because you liked {demo_dataset.items[because['item_id']].title} "
            f"({when}, weight {because['weight']:.2f})")


def test_explorer_as_a_user_drives_it(browser_page, server: LiveServer, demo_dataset,  # type: ignore[no-untyped-def]
                                      tmp_path: Path) -> None:
    page = browser_page
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-loaded=true]")
    idle(page)
    assert page.text_content("[data-testid=status]") == "dataset demo · version 1"
    docs = page.locator("#docs-link")
    assert docs.get_attribute("href") == "/docs" and docs.is_visible()
    assert server.request("GET", "/docs")[0] == 200

    # Every /v1/ route needs a key here: the page says so in one line until one is typed.
    assert page.text_content("[data-testid=error]") == (
        "Error: this route needs a key: send 'api-key: KEY' or 'Authorization: Bearer KEY'")
    use_key(page, READ)
    assert page.is_hidden("[data-testid=error]")
    assert page.input_value("#api-key") == ""  # never shown back
    assert page.get_attribute("#api-key", "type") == "password"
    assert page.evaluate("sessionStorage.getItem('p4r-api-key')") == READ
    assert page.evaluate("localStorage.length") == 0
    assert READ not in page.content()
    assert page.text_content("#key-state") == (
        "A key is set for this tab; it is sent with every request.")

    # Pick a user: the history shows their interactions newest first, by name, with the
    # review text, date, rating, and a mark on the one that arrived live.
    live = {"user_id": "u-chloe", "item_id": "tide-sushi", "timestamp": 1.75e9, "rating": 5,
            "text": "Gorgeous nigiri."}
    assert server.request("POST", "/v1/interactions", {"interactions": [live]})[0] == 200
    page.fill("#user-id", "u-chloe")
    page.click("#load-user")
    idle(page)
    chloe = sorted((i for i in demo_dataset.interactions if i.user_id == "u-chloe"),
                   key=lambda i: (i.timestamp, i.item_id))
    past = page.locator("#history > li")
    expected = [("tide-sushi", "2025-06-15", 5.0, "Gorgeous nigiri.", True)] + [
        (i.item_id, datetime.fromtimestamp(i.timestamp, UTC).strftime("%Y-%m-%d"), i.rating,
         i.text, False) for i in reversed(chloe)]
    assert past.count() == len(expected)
    for index, (item_id, day, rating, text, is_live) in enumerate(expected):
        entry = past.nth(index)
        assert entry.get_attribute("data-item-id") == item_id
        assert entry.locator("button.item-title").text_content() == (
            demo_dataset.items[item_id].title)
        assert entry.locator(".past-text").text_content() == text
        meta = entry.locator(".past-meta").text_content()
        assert meta.startswith(f"{day} · rating {rating:g} · in your profile"), meta
        assert entry.locator(".mark.live").count() == int(is_live)
        assert entry.locator(".mark.seen").count() == 0  # all of them are: no mark
        assert entry.locator(".item-summary").text_content() == (
            demo_dataset.items[item_id].summary)
    assert page.text_content("#history-note") == (
        '5 interactions; the profile averages the last 10 (marked "in your profile"); 1 '
        "arrived live, after version 1 was built")
    seen = {i.item_id for i in chloe} | {"tide-sushi"}

    # Paste candidates, pick one more: each is listed by name, those seen marked.
    page.fill("#candidates", ", ".join(CANDS[:-1]))
    page.select_option("#item-pick", CANDS[-1])
    page.click("#add-item-button")
    idle(page)
    assert page.input_value("#candidates").split("\n") == CANDS
    listed = page.locator("#candidate-list > li")
    assert [listed.nth(i).get_attribute("data-item-id") for i in range(listed.count())] == CANDS
    for index, item_id in enumerate(CANDS):
        entry = listed.nth(index)
        assert entry.locator("button.item-title").text_content() == (
            demo_dataset.items[item_id].title)
        assert entry.locator(".mark.seen").count() == int(item_id in seen), item_id

    # Rerank: titles, scores explained, personas, summaries, marks, because-lines if any.
    page.click("#rerank")
    idle(page)
    status, answer = server.request("POST", "/v1/rerank",
                                    {"user_id": "u-chloe", "candidates": CANDS})
    assert status == 200
    assert {i["explanation"] for i in answer["items"]} == {"persona", "summary"}
    check_results(page, answer, demo_dataset, seen)
    assert page.is_hidden("[data-testid=error]")
    page.screenshot(path=str(shots / "explorer-desktop.png"), full_page=True)

    # Inputs are labelled; what opens things is a button, reachable by keyboard.
    assert page.evaluate("""[...document.querySelectorAll('input, select, textarea')]
        .filter((e) => !e.labels || e.labels.length === 0).map((e) => e.id)""") == []
    assert page.evaluate("""[...document.querySelectorAll('.item-title')]
        .every((e) => e.tagName === 'BUTTON')""")

    # An item's personas, opened from the keyboard: all of them, the best match marked.
    first = answer["items"][0]
    page.locator("#results > li").first.locator("button.item-title").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#item-dialog[open]")
    idle(page)
    _, personas = server.request("GET", f"/v1/items/{first['item_id']}/personas")
    assert page.text_content("#dialog-title") == demo_dataset.items[first["item_id"]].title
    assert page.text_content("#dialog-summary") == demo_dataset.items[first["item_id"]].summary
    names = page.locator("#dialog-personas .persona-name")
    best = first["persona"]["persona_id"]
    assert names.count() == len(personas["personas"])
    for index, persona in enumerate(personas["personas"]):
        shown = names.nth(index).text_content()
        suffix = " best match for you" if persona["persona_id"] == best else ""
        assert shown == persona["name"] + suffix
    page.screenshot(path=str(shots / "explorer-personas.png"))
    page.keyboard.press("Escape")
    page.wait_for_selector("#item-dialog:not([open])", state="attached")

    # Adding an interaction with the read-only key: refused, in one line.
    page.fill("#add-item", "noodle-harbor")
    page.fill("#add-rating", "4")
    page.fill("#add-text", "Fiery broth, loved it.")
    page.click("#add-submit")
    idle(page)
    assert page.text_content("#add-result") == (
        "Error: the key is read-only; writes need the read-write key")
    assert past.count() == len(expected)

    # With the read-write key: added, and the history and the ranking follow.
    use_key(page, WRITE)
    before = time.time()
    page.fill("#add-text", "Fiery broth, loved it.")
    page.click("#add-submit")
    idle(page)
    assert page.text_content("#add-result") == (
        "Added 1 interaction for u-chloe (version 1); history and ranking refreshed.")
    newest = past.first
    assert newest.get_attribute("data-item-id") == "noodle-harbor"
    assert newest.locator(".past-text").text_content() == "Fiery broth, loved it."
    assert newest.locator(".mark.live").text_content() == "live"
    assert " · rating 4 · " in newest.locator(".past-meta").text_content()
    _, history = server.request("GET", "/v1/users/u-chloe/history?limit=1")
    added = history["interactions"][0]
    assert (added["item_id"], added["origin"], added["rating"]) == ("noodle-harbor", "live", 4)
    assert int(before) - 1 <= added["timestamp"] <= time.time()  # now, in seconds
    _, answer = server.request("POST", "/v1/rerank", {"user_id": "u-chloe", "candidates": CANDS})
    check_results(page, answer, demo_dataset, seen | {"noodle-harbor"})
    assert page.locator("#candidate-list > li[data-item-id=noodle-harbor] .mark.seen").count() == 1

    # "Because you liked …": shown wherever an answer carries it (injected here, so the page
    # is checked whether or not this version of the library sends it).
    def with_because(route) -> None:  # type: ignore[no-untyped-def]
        response = route.fetch()
        body = response.json()
        for item in body["items"]:
            item["because"] = {"item_id": "cafe-lumen", "timestamp": 1725721200, "weight": 0.5}
        body["items"][-1]["because"] = None
        route.fulfill(response=response, json=body)

    page.route("**/v1/rerank", with_because)
    page.click("#rerank")
    idle(page)
    page.unroute("**/v1/rerank")
    lines = texts(page, "#results > li .because")
    assert lines == ["Because you liked Café Lumen (2024-09-07, weight 0.50)"] * (
        len(answer["items"]) - 1)

    # An unknown candidate: the API's one-line error, and the list cleared.
    page.fill("#candidates", "tide-sushi\nghost-kitchen")
    idle(page)
    assert page.locator("#candidate-list .mark.unknown").text_content() == (
        "no summary in the index")
    page.click("#rerank")
    idle(page)
    _, refused = server.request("POST", "/v1/rerank", {
        "user_id": "u-chloe", "candidates": ["tide-sushi", "ghost-kitchen"]})
    assert page.text_content("[data-testid=error]") == "Error: " + refused["error"]["message"]
    assert page.locator("#results > li").count() == 0

    # At 390 px (a phone): one column, no horizontal scroll, the controls on screen.
    page.fill("#candidates", "\n".join(CANDS))
    page.click("#rerank")
    idle(page)
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in ("#docs-link", "#api-key", "#save-key", "#user-id", "#load-user",
                     "#history > li", "#add-item", "#add-submit", "#candidates", "#item-pick",
                     "#rerank", "#results > li button.item-title", "#results > li .persona"):
        control = page.locator(selector).first
        assert control.is_visible(), selector
        box = control.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (
            selector, box)
    # One column in the order people use it: who, what to rank, the ranking, the history.
    tops = [page.locator(f"#{panel}-panel").bounding_box()["y"]
            for panel in ("user", "candidates", "results", "history")]
    assert tops == sorted(tops), tops
    page.screenshot(path=str(shots / "explorer-390.png"), full_page=True)
    page.locator("#results-heading").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "explorer-390-results.png"))
    print(f"screenshots: {shots}")
