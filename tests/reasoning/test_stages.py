"""Stages against the scripted server serving the real gpt-4o-mini outputs of the sample."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from p4r.errors import BackendError
from p4r.reasoning.stages import (
    Context,
    detect_domain,
    normalize_persona_id,
    run_align,
    run_aspects,
    run_personas,
    run_summary,
)
from tests.conftest import write_jsonl
from tests.reasoning.llm_server import ScriptedLLM, system_text, user_text


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def real_responder(truth: dict[str, Any]):  # type: ignore[no-untyped-def]
    """Answer each stage with the sample's real output for the item or review in the prompt."""
    by_summary = {g["item_summary"][:200]: g["item_id"] for g in truth["grouped"].values()}

    def respond(request: dict[str, Any]) -> str:
        system, user = system_text(request), user_text(request)
        if system.startswith("You describe"):
            name = re.search(r"Name: (.*)\n", user).group(1)  # type: ignore[union-attr]
            return json.dumps({"summary": truth["summary"][name]})
        if "customer review" in system:
            review = " ".join(user.split("): ", 1)[1].split("\n\nSlots:")[0].split())[:300]
            match = next(v for k, v in truth["aspects"].items()
                         if " ".join(k.split())[:300] == review)
            return json.dumps(match)
        if "build personas" in system:
            item = next(i for s, i in by_summary.items() if s[:150] in " ".join(user.split()))
            return json.dumps({"personas": [
                {"name": p["Name"], "description": p["Description"],
                 "rationale": p["Preference_Rationale"]}
                for p in truth["personas"][item]["personas"]]})
        raise AssertionError(f"unexpected prompt: {system[:60]}")

    return respond


def test_summary_stage_writes_real_summaries(yelp_raw, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
                                             make_client) -> None:
    root, truth = yelp_raw
    llm_server.responder = real_responder(truth)
    report = run_summary(Context(root, "yelp", make_client(), progress=False))
    assert report.done == 8 and len(llm_server.requests) == 8
    items = rows(root / "items.jsonl")
    assert [i["summary"] for i in items] == [truth["summary"][i["title"]] for i in items]
    first = user_text(llm_server.requests[0])
    assert "Metadata:" in first and items[0]["title"] in first
    again = run_summary(Context(root, "yelp", make_client(), progress=False))
    assert again.skipped == 8 and len(llm_server.requests) == 8, "finished work is skipped"


def test_summary_from_reviews_when_metadata_is_missing(tmp_path: Path, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
                                                       make_client) -> None:
    write_jsonl(tmp_path / "items.jsonl", [{"item_id": "B001", "title": "", "metadata": {}}])
    write_jsonl(tmp_path / "reviews.jsonl", [
        {"user_id": "u", "item_id": "B001", "timestamp": 1, "title": "Great shampoo",
         "text": "Leaves hair soft."}])
    llm_server.responder = lambda r: json.dumps({"summary": "A shampoo that reviewers say "
                                                            "leaves hair soft."})
    run_summary(Context(tmp_path, "amazon", make_client(), progress=False))
    prompt = user_text(llm_server.requests[0])
    assert "no metadata" in prompt and "Great shampoo" in prompt and "Leaves hair soft" in prompt


def test_aspects_stage_real_outputs_empty_review_and_drop(yelp_raw, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
                                                          make_client) -> None:
    root, truth = yelp_raw
    reviews = rows(root / "reviews.jsonl")
    reviews.append({"user_id": "x", "item_id": reviews[0]["item_id"], "timestamp": 1,
                    "text": "   "})
    reviews.append({"user_id": "y", "item_id": reviews[0]["item_id"], "timestamp": 2,
                    "text": "ok."})
    write_jsonl(root / "reviews.jsonl", reviews)
    respond = real_responder(truth)
    llm_server.responder = lambda r: (json.dumps({"cuisine_category": "Diner"})
                                      if "): ok.\n" in user_text(r)
                                      else respond(r))
    report = run_aspects(Context(root, "yelp", make_client(), progress=False))
    assert len(llm_server.requests) == 11, "the blank review makes no request"
    out = rows(root / "reviews.jsonl")
    for row in out[:10]:
        real = truth["aspects"][row["text"].strip()]
        assert {k: v for k, v in row["aspects"].items() if k in real} == real
        assert all(v is None for k, v in row["aspects"].items() if k not in real)
    assert out[10]["aspects"] is None and out[11]["aspects"] is None, "80% null slots: dropped"
    assert report.done == 10 and report.dropped == 2


def test_personas_stage_real_outputs(tmp_path: Path, yelp_raw, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
                                     make_client) -> None:
    _, truth = yelp_raw
    root = tmp_path / "p"
    grouped = [truth["grouped"][i] for i in truth["personas"]]
    write_jsonl(root / "items.jsonl", [{"item_id": g["item_id"], "title": g["item_title"],
                                        "summary": g["item_summary"]} for g in grouped])
    reviews = []
    for g in grouped:
        aspects = g["aspects"] if isinstance(g["aspects"], list) else __import__(
            "ast").literal_eval(g["aspects"])
        for a in aspects[:12]:
            reviews.append({"user_id": a["user_id"], "item_id": g["item_id"],
                            "timestamp": a["timestamp"], "rating": a["rating"],
                            "text": a["review_text"], "aspects": a["extracted_aspects"]})
    write_jsonl(root / "reviews.jsonl", reviews)
    llm_server.responder = real_responder(truth)
    report = run_personas(Context(root, "yelp", make_client(), progress=False))
    assert report.done == len(grouped)
    written = {r["item_id"]: r["personas"] for r in rows(root / "personas.jsonl")}
    for item, expected in truth["personas"].items():
        assert [p["name"] for p in written[item]] == [p["Name"] for p in expected["personas"]]
        assert [p["persona_id"] for p in written[item]] == [
            f"P{n}" for n in range(1, len(expected["personas"]) + 1)]
    prompt = user_text(llm_server.requests[0])
    assert "cuisine category:" in prompt and "between 2 and 7 personas" in prompt


def test_item_without_reviews_gets_personas_from_summary(tmp_path: Path, make_client,  # type: ignore[no-untyped-def]
                                                         llm_server: ScriptedLLM) -> None:
    write_jsonl(tmp_path / "items.jsonl", [{"item_id": "a", "summary": "A quiet tea room."}])
    llm_server.responder = lambda r: json.dumps({"personas": [
        {"name": "Quiet Reader", "description": "Someone who reads over tea.",
         "rationale": "The quiet tea room suits long reading sessions."}]})
    run_personas(Context(tmp_path, "yelp", make_client(), progress=False))
    assert "1 to 3 personas inferred from the description alone" in user_text(
        llm_server.requests[0])
    assert rows(tmp_path / "personas.jsonl")[0]["personas"][0]["persona_id"] == "P1"


def _align_dataset(root: Path) -> None:
    write_jsonl(root / "items.jsonl", [{"item_id": i, "summary": f"Place {i} serves food."}
                                       for i in "abcd"])
    write_jsonl(root / "reviews.jsonl", [
        {"user_id": "u", "item_id": i, "timestamp": t, "text": f"I liked {i}.",
         "aspects": {"cuisine_category": f"cuisine {i}"}}
        for t, i in enumerate("abcd", start=1)] + [
        {"user_id": "v", "item_id": i, "timestamp": t, "text": f"Fine {i}."}
        for t, i in enumerate("bcd", start=1)])
    write_jsonl(root / "personas.jsonl", [
        {"item_id": i, "personas": [
            {"persona_id": "P1", "name": "Fan One", "description": "d1", "rationale": "r1"},
            {"persona_id": "P2", "name": "Fan Two", "description": "d2", "rationale": "r2"}]}
        for i in "abcd"])


def test_align_stage_judges_training_interactions(tmp_path: Path, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
                                                  make_client) -> None:
    _align_dataset(tmp_path)
    llm_server.responder = lambda r: json.dumps({
        "persona_id": "Persona 2", "reason": "The user likes this. It fits the persona."})
    report = run_align(Context(tmp_path, "yelp", make_client(), progress=False))
    out = rows(tmp_path / "alignments.jsonl")
    # u: train a,b (c valid, d test) → b judged (a has no earlier history); v: train b → none
    assert [(r["user_id"], r["item_id"]) for r in out] == [("u", "b")]
    assert out[0]["persona_id"] == "P2" and out[0]["reason"]
    assert report.skipped == 2
    prompt = user_text(llm_server.requests[0])
    assert "cuisine category: cuisine a" in prompt and "P1: Fan One" in prompt
    assert "Place d" not in prompt, "no future interaction leaks into the profile"


def test_normalize_persona_id() -> None:
    valid = {"P1", "P2", "P3"}
    assert normalize_persona_id("P2", "x", valid) == "P2"
    assert normalize_persona_id("x_P3", "x", valid) == "P3"
    assert normalize_persona_id("3", "x", valid) == "P3"
    with pytest.raises(ValueError, match="not one of"):
        normalize_persona_id("P9", "x", valid)


def test_crash_mid_stage_then_resume_repeats_nothing(yelp_raw, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
                                                     make_client) -> None:
    root, truth = yelp_raw
    llm_server.responder = real_responder(truth)
    llm_server.fail_after = 5  # the endpoint breaks after five answers
    before = (root / "items.jsonl").read_text()
    with pytest.raises(BackendError):
        run_summary(Context(root, "yelp", make_client(), progress=False))
    assert (root / "items.jsonl").read_text() == before, "no half-written output"
    assert len(llm_server.requests) >= 6, "five answers, then the failure"
    llm_server.fail_after = None
    llm_server.requests.clear()
    report = run_summary(Context(root, "yelp", make_client(), progress=False))
    assert report.done == 8
    assert len(llm_server.requests) == 3, "only the three unanswered items are asked again"
    asked = {re.search(r"Name: (.*)\n", user_text(r)).group(1) for r in llm_server.requests}  # type: ignore[union-attr]
    assert len(asked) == 3


def test_cli_all_then_index_and_rerank(tmp_path: Path, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
                                       monkeypatch: pytest.MonkeyPatch, tiny_models) -> None:
    from p4r.cli.index import main as index_cli
    from p4r.cli.query import main as query_cli
    from p4r.cli.reason import main as reason_cli

    root = tmp_path / "mini"
    write_jsonl(root / "items.jsonl", [{"item_id": i, "title": f"Cafe {i}",
                                        "metadata": {"categories": "Cafe"}, "summary": ""}
                                       for i in "abcde"])
    write_jsonl(root / "reviews.jsonl", [
        {"user_id": u, "item_id": i, "timestamp": t, "rating": 5,
         "text": f"{u} found the {i} coffee good."}
        for u, items in (("u1", "abcde"), ("u2", "bcde")) for t, i in enumerate(items)])

    def respond(request: dict[str, Any]) -> str:
        system = system_text(request)
        if system.startswith("You describe"):
            return json.dumps({"summary": "A cafe serving coffee and pastries downtown."})
        if "customer review" in system:
            return json.dumps({"cuisine_category": "Cafe", "quality_criteria": "coffee taste"})
        if "build personas" in system:
            personas = [
                {"name": "Espresso Lover", "description": "Drinks strong espresso daily.",
                 "rationale": "The espresso is strong and cheap."},
                {"name": "Laptop Worker", "description": "Works remotely from cafes.",
                 "rationale": "Quiet seating and coffee refills for long hours."}]
            single = "exactly 1 persona" in user_text(request)
            return json.dumps({"personas": personas[:1] if single else personas})
        return json.dumps({"persona_id": "P1", "reason": "Likes coffee. Strong espresso fits."})

    llm_server.responder = respond
    monkeypatch.setenv("P4R_LLM__BASE_URL", llm_server.base_url)
    monkeypatch.setenv("P4R_LLM__API_KEY", "k")
    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
    result = CliRunner().invoke(reason_cli, ["all", "-d", "mini", "--data-dir", str(root),
                                             "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["stage"] for s in report["stages"]] == ["summary", "aspects", "personas", "align"]
    assert report["usage"]["requests"] == len(llm_server.requests)
    by_stage = [system_text(r).split()[1] for r in llm_server.requests]
    # identical prompts are asked once: the personas of b..e share summary and evidence
    assert by_stage.count("describe") == 5 and by_stage.count("read") == 9
    # judged: u1's b and c, u2's c; u1→b and u2→c read alike (one earlier cafe with the same
    # scripted summary and aspects), so that prompt is asked once
    assert by_stage.count("are") == 2
    distinct = {(system_text(r), user_text(r)) for r in llm_server.requests}
    assert len(distinct) == len(llm_server.requests), "no prompt is sent twice"
    assert report["usage"]["cost_usd"] > 0
    assert detect_domain(root).name == "yelp"
    assert [(r["user_id"], r["item_id"]) for r in rows(root / "alignments.jsonl")] == [
        ("u1", "b"), ("u1", "c"), ("u2", "c")]
    again = CliRunner().invoke(reason_cli, ["all", "-d", "mini", "--data-dir", str(root)])
    assert again.exit_code == 0 and len(llm_server.requests) == len(by_stage), \
        "a re-run costs nothing"

    assert CliRunner().invoke(index_cli, ["upsert", "-d", "mini", "--data-dir", str(root)]
                              ).exit_code == 0
    ranked = CliRunner().invoke(query_cli, ["rerank", "-d", "mini", "-u", "u1", "-c", "a,b,e",
                                            "--json"])
    assert ranked.exit_code == 0, ranked.output
    assert {r["explanation"] for r in json.loads(ranked.stdout)} == {"persona"}


def test_stubborn_item_is_reported_not_fatal(tmp_path: Path, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
                                             make_client) -> None:
    write_jsonl(tmp_path / "items.jsonl", [
        {"item_id": i, "title": f"Shop {i}", "metadata": {"k": i}, "summary": ""} for i in "ab"])
    llm_server.responder = lambda r: ("garbage" if "Shop a" in user_text(r) else json.dumps(
        {"summary": "A shop that sells things to people in town."}))
    report = run_summary(Context(tmp_path, "yelp", make_client(max_retries=1), progress=False))
    assert report.failed == 1 and report.done == 1
    assert "invalid output after 2 attempt" in report.notes[0]
    items = {r["item_id"]: r["summary"] for r in rows(tmp_path / "items.jsonl")}
    assert items == {"a": "", "b": "A shop that sells things to people in town."}
    llm_server.responder = lambda r: json.dumps({"summary": "A shop that now has a summary."})
    again = run_summary(Context(tmp_path, "yelp", make_client(), progress=False))
    assert again.done == 1 and again.skipped == 1, "only the failed item is asked again"


def test_counts_only_metadata_summarises_from_reviews(tmp_path: Path, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
                                                      make_client) -> None:
    write_jsonl(tmp_path / "items.jsonl", [{"item_id": "B002", "title": "", "metadata": {
        "category": "All_Beauty", "review_count": 3, "average_rating": 4.0}}])
    write_jsonl(tmp_path / "reviews.jsonl", [
        {"user_id": "u", "item_id": "B002", "timestamp": 1, "title": "Nice nail brush",
         "text": "Stiff bristles, cleans well."}])
    llm_server.responder = lambda r: json.dumps({"summary": "A nail brush with stiff bristles "
                                                            "that reviewers say cleans well."})
    run_summary(Context(tmp_path, "amazon", make_client(), progress=False))
    prompt = user_text(llm_server.requests[0])
    assert "no metadata" in prompt and "Nice nail brush" in prompt


def test_bad_rows_name_file_line_and_field(tmp_path: Path, make_client) -> None:  # type: ignore[no-untyped-def]
    from p4r.errors import InputError

    write_jsonl(tmp_path / "items.jsonl", [{"item_id": "a", "title": "A", "summary": "s"}])
    write_jsonl(tmp_path / "reviews.jsonl", [
        {"user_id": "u", "item_id": "a", "timestamp": 1, "text": "fine"},
        {"user_id": "u", "item_id": "a", "timestamp": "yesterday", "text": "fine"}])
    with pytest.raises(InputError, match=r"reviews.jsonl:2: field 'timestamp': .*yesterday"):
        run_aspects(Context(tmp_path, "yelp", make_client(), progress=False))
    write_jsonl(tmp_path / "items.jsonl", [{"item_id": "a", "title": {"oops": [1]}}])
    with pytest.raises(InputError, match=r"items.jsonl:1: field 'title': Input should be a "
                                         r"valid string"):
        run_summary(Context(tmp_path, "yelp", make_client(), progress=False))


def test_rewritten_files_keep_unknown_fields_and_shapes(tmp_path: Path, make_client,  # type: ignore[no-untyped-def]
                                                        llm_server: ScriptedLLM) -> None:
    original = {"item_id": 7, "title": "Shop", "metadata": {"k": 1}, "summary": "",
                "extra": {"keep": True}}
    write_jsonl(tmp_path / "items.jsonl", [original])
    llm_server.responder = lambda r: json.dumps({"summary": "A shop selling things in town."})
    run_summary(Context(tmp_path, "yelp", make_client(), progress=False))
    assert rows(tmp_path / "items.jsonl") == [{**original, "item_id": "7",
                                               "summary": "A shop selling things in town."}]
