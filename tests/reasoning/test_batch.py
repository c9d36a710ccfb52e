"""Batch mode through the real openai client against the scripted server's Batch API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from p4r.cli.reason import main as reason_cli
from p4r.errors import BackendError
from p4r.reasoning.batch import (
    BatchMode,
    ResultsFile,
    pending_requests,
    record_path,
    runner_options,
)
from p4r.reasoning.runner import Context
from p4r.reasoning.stages import run_stages
from tests.reasoning.llm_server import ScriptedLLM, user_text
from tests.reasoning.test_stages import real_responder, rows


def batch(ctx: Context, **kw: Any) -> list[Any]:
    mode = BatchMode(poll_seconds=0.001, progress=False, **kw)
    return run_stages(ctx, ["summary"], **runner_options(ctx, mode))


def chat_calls(server: ScriptedLLM) -> int:
    return sum(1 for _, path in server.calls if path == "/v1/chat/completions")


def test_submit_poll_ingest_cache_then_rerun_makes_no_request(  # type: ignore[no-untyped-def]
        yelp_raw, llm_server: ScriptedLLM, make_client) -> None:
    root, truth = yelp_raw
    llm_server.responder = real_responder(truth)
    client = make_client()
    report = batch(Context(root, "yelp", client, progress=False))[0]
    assert report.done == 8 and report.failed == 0
    assert [c for c in llm_server.calls if c[0] == "POST"] == [("POST", "/v1/files"),
                                                                ("POST", "/v1/batches")]
    assert llm_server.calls.count(("GET", "/v1/batches/batch_1")) == 2, "polled until done"
    assert chat_calls(llm_server) == 0, "every answer came from the batch"
    assert len(llm_server.batch_bodies) == 8
    body = llm_server.batch_bodies[0]
    assert body["model"] == "gpt-4o-mini"
    assert body["response_format"]["json_schema"]["schema"]["properties"]["summary"]
    items = rows(root / "items.jsonl")
    assert [i["summary"] for i in items] == [truth["summary"][i["title"]] for i in items]
    assert not record_path(root, "summary").exists(), "an ingested batch is forgotten"
    usage, settings = client.usage, client.settings
    assert usage.batch_requests == 8 and usage.requests == 0
    assert usage.cost(settings) == pytest.approx(0.5 * (
        usage.batch_prompt_tokens * settings.price_input_per_mtok
        + usage.batch_completion_tokens * settings.price_output_per_mtok) / 1e6)
    assert usage.cost(settings) > 0

    # the same stage again (forced, so every item is pending): all answers are cached
    calls = len(llm_server.calls)
    again = batch(Context(root, "yelp", make_client(), force=True, progress=False))[0]
    assert again.done == 8 and len(llm_server.calls) == calls, "a re-run makes 0 requests"


def test_invalid_and_errored_answers_are_retried_synchronously(  # type: ignore[no-untyped-def]
        yelp_raw, llm_server: ScriptedLLM, make_client) -> None:
    root, truth = yelp_raw
    respond = real_responder(truth)
    llm_server.responder = respond
    ctx = Context(root, "yelp", make_client(), progress=False)
    first, second = pending_requests(ctx, "summary")[:2]
    llm_server.batch_responder = lambda body: ("{\"summary\": \"too short\"}"
                                               if body["messages"][1]["content"] == first.user
                                               else respond(body))
    llm_server.batch_errors = {second.key("gpt-4o-mini")}
    report = batch(ctx)[0]
    assert report.done == 8 and report.failed == 0
    assert chat_calls(llm_server) == 2, "one repair, one errored line asked again"
    repair = next(r for r in llm_server.requests if user_text(r) == first.user)
    assert repair["messages"][2] == {"role": "assistant",
                                     "content": "{\"summary\": \"too short\"}"}
    assert "at least 20 characters" in repair["messages"][3]["content"]
    assert "1 invalid (retried synchronously), 1 errored" in " ".join(report.notes)


def test_interrupted_batch_resumes_by_recorded_id(yelp_raw, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
                                                   make_client) -> None:
    root, truth = yelp_raw
    llm_server.responder = real_responder(truth)
    llm_server.polls_to_complete = 3

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch(Context(root, "yelp", make_client(), progress=False), sleep=interrupt)
    record = json.loads(record_path(root, "summary").read_text())
    assert record["batches"] == [{"batch_id": "batch_1", "input_file_id": "file-1",
                                  "requests": 8}]
    assert rows(root / "items.jsonl")[0]["summary"] == "", "nothing written yet"

    report = batch(Context(root, "yelp", make_client(), progress=False))[0]
    assert report.done == 8
    posts = [c for c in llm_server.calls if c[0] == "POST"]
    assert posts == [("POST", "/v1/files"), ("POST", "/v1/batches")], "not submitted twice"
    assert llm_server.calls.count(("GET", "/v1/batches/batch_1")) == 3
    assert chat_calls(llm_server) == 0 and not record_path(root, "summary").exists()


def test_failed_batch_is_an_error_and_is_forgotten(yelp_raw, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
                                                   make_client) -> None:
    root, truth = yelp_raw
    llm_server.responder = real_responder(truth)
    llm_server.batch_status_final = "failed"
    with pytest.raises(BackendError, match=r"batch batch_1 \(no reason given\) failed.*"
                                           r"re-run to submit again"):
        batch(Context(root, "yelp", make_client(), progress=False))
    assert not record_path(root, "summary").exists()


def test_large_stages_are_split_and_expired_leftovers_resubmitted(  # type: ignore[no-untyped-def]
        yelp_raw, llm_server: ScriptedLLM, make_client) -> None:
    root, truth = yelp_raw
    llm_server.responder = real_responder(truth)
    llm_server.expire = {"batch_2"}  # runs 1 of its 3 requests, then expires
    report = batch(Context(root, "yelp", make_client(), progress=False), max_requests=3)[0]
    assert report.done == 8 and report.failed == 0
    created = [c for c in llm_server.calls if c == ("POST", "/v1/batches")]
    assert len(created) == 4, "8 requests in files of at most 3, then 1 follow-up batch"
    sizes = [b["request_counts"]["total"] for b in llm_server.batches.values()]
    assert sizes == [3, 1, 2, 2], "batch_2 ran 1 of 3 before it expired; 2 were resubmitted"
    assert chat_calls(llm_server) == 0
    assert "batch batch_2 (expired)" in " ".join(report.notes)


def _run_elsewhere(requests_file: Path, respond: Any, skip: int = 0) -> Path:
    """What vLLM's run_batch does with the file: one result line per request line."""
    out = requests_file.with_name("results.jsonl")
    lines = [json.loads(x) for x in requests_file.read_text().splitlines()][skip:]
    out.write_text("".join(json.dumps({
        "id": "r", "custom_id": line["custom_id"], "error": None,
        "response": {"status_code": 200, "request_id": "q", "body": {
            "choices": [{"index": 0, "message": {"role": "assistant",
                                                 "content": respond(line["body"])}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 40}}}}) + "\n"
        for line in lines))
    return out


def test_batch_file_only_then_results_without_an_endpoint(  # type: ignore[no-untyped-def]
        yelp_raw, llm_server: ScriptedLLM) -> None:
    root, truth = yelp_raw
    args = ["summary", "-d", "mini", "--data-dir", str(root)]
    written = CliRunner().invoke(reason_cli, [*args, "--batch-file-only", "--json"],
                                 catch_exceptions=False)
    assert written.exit_code == 0, written.output
    out = json.loads(written.stdout)
    assert out["requests"] == 8 and Path(out["file"]).exists()
    first = json.loads(Path(out["file"]).read_text().splitlines()[0])
    assert first["url"] == "/v1/chat/completions" and first["method"] == "POST"

    results = _run_elsewhere(Path(out["file"]), real_responder(truth), skip=1)
    ingested = CliRunner().invoke(reason_cli, [*args, "--batch-results", str(results),
                                               "--json"])
    assert ingested.exit_code == 1, "one request had no result and there is no endpoint"
    report = json.loads(ingested.stdout)
    stage = report["stages"][0]
    assert stage["done"] == 7 and stage["failed"] == 1
    assert "no endpoint is set" in " ".join(stage["notes"])
    assert report["usage"]["batch_requests"] == 7 and report["usage"]["requests"] == 0
    assert llm_server.calls == [], "no HTTP call at all"
    assert sum(bool(i["summary"]) for i in rows(root / "items.jsonl")) == 7


def test_results_file_errors_name_file_and_line(yelp_raw, make_client) -> None:  # type: ignore[no-untyped-def]
    from p4r.errors import InputError

    root, _ = yelp_raw
    bad = root / "bad.jsonl"
    bad.write_text('{"custom_id": "x"}\nnot json\n')
    ctx = Context(root, "yelp", make_client(), progress=False)
    with pytest.raises(InputError, match=r"bad.jsonl:2: malformed JSON"):
        run_stages(ctx, ["summary"], **runner_options(ctx, ResultsFile(bad)))


def test_cli_refuses_batch_files_for_several_stages(tmp_path: Path) -> None:
    result = CliRunner().invoke(reason_cli, ["all", "-d", "x", "--data-dir", str(tmp_path),
                                             "--batch-file-only"])
    assert result.exit_code == 1 and "one stage at a time" in result.output


def test_damaged_batch_record_names_the_file(yelp_raw, make_client) -> None:  # type: ignore[no-untyped-def]
    from p4r.errors import InputError

    root, _ = yelp_raw
    path = record_path(root, "summary")
    path.parent.mkdir(parents=True)
    path.write_text('{"batch_id": ')
    with pytest.raises(InputError, match=rf"^{path}: damaged batch record .*delete it"):
        batch(Context(root, "yelp", make_client(), progress=False))


def test_cli_batch_reports_batch_usage_and_cost(yelp_raw, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root, truth = yelp_raw
    llm_server.responder = real_responder(truth)
    monkeypatch.setenv("P4R_LLM__BASE_URL", llm_server.base_url)
    monkeypatch.setenv("P4R_LLM__BATCH_POLL_SECONDS", "0.01")
    args = ["summary", "-d", "mini", "--data-dir", str(root), "--batch", "--json"]
    result = CliRunner().invoke(reason_cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    usage = json.loads(result.stdout)["usage"]
    assert usage["batch_requests"] == 8 and usage["requests"] == 0
    assert usage["cost_usd"] > 0
    again = CliRunner().invoke(reason_cli, args, catch_exceptions=False)
    assert json.loads(again.stdout)["stages"][0]["skipped"] == 8
    assert chat_calls(llm_server) == 0 and len(llm_server.batches) == 1
