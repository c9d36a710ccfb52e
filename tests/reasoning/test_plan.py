"""``p4r-reason plan``: requests after the cache, tokens, and cost sync vs batch."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from p4r.cli.reason import main as reason_cli
from p4r.reasoning.plan import TYPICAL_OUTPUT_TOKENS, token_counter
from tests.reasoning.llm_server import ScriptedLLM
from tests.reasoning.test_stages import real_responder


def plan(root) -> dict:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(reason_cli, ["plan", "-d", "mini", "--data-dir", str(root),
                                             "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_plan_counts_requests_tokens_and_both_prices(yelp_raw,  # type: ignore[no-untyped-def]
                                                     llm_server: ScriptedLLM) -> None:
    root, _ = yelp_raw
    before = {s["stage"]: s for s in plan(root)["stages"]}
    assert llm_server.calls == [], "planning sends nothing"
    assert before["summary"]["requests"] == 8 and before["summary"]["cached"] == 0
    assert before["aspects"]["requests"] == 10
    assert before["summary"]["output_tokens"] == 8 * TYPICAL_OUTPUT_TOKENS["summary"]
    for stage in before.values():
        assert stage["cost_sync"] == pytest.approx(2 * stage["cost_batch"])
    assert before["summary"]["input_tokens"] > 8 * 200, "system, user and schema are counted"
    assert "typical set of 6 personas" in before["align"]["note"]



def test_plan_counts_requests_after_the_cache(yelp_raw, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root, truth = yelp_raw
    llm_server.responder = real_responder(truth)
    monkeypatch.setenv("P4R_LLM__BASE_URL", llm_server.base_url)
    CliRunner().invoke(reason_cli, ["summary", "-d", "mini", "--data-dir", str(root)])
    # the summaries are lost, the answers are not: planning finds all 8 in the cache
    rows = [json.loads(x) for x in (root / "items.jsonl").read_text().splitlines()]
    (root / "items.jsonl").write_text("".join(json.dumps({**r, "summary": ""}) + "\n"
                                              for r in rows))
    summary = plan(root)["stages"][0]
    assert summary["requests"] == 0 and summary["cached"] == 8
    assert summary["cost_sync"] == 0


def test_token_counting_says_which_method_was_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # not importable
    count, method = token_counter("gpt-4o-mini")
    assert method == "estimated at 4 characters per token (tiktoken is not installed)"
    assert count("x" * 400) == 100
