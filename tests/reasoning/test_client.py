"""The LLM client through the real openai package against the scripted server."""

from __future__ import annotations

import json

import pytest

from p4r.errors import BackendError
from p4r.reasoning.client import LLMClient, LLMOutputError
from p4r.reasoning.schemas import SummaryOut, personas_model
from p4r.settings import LLMSettings
from tests.reasoning.llm_server import Reply, ScriptedLLM

GOOD = json.dumps({"summary": "A small bakery on Main Street selling bread and pastries."})


def ask(client: LLMClient, text: str = "describe item 1") -> SummaryOut:
    return client.complete(system="sys", user=text, schema=SummaryOut, prompt_version="t-1",
                           cache_inputs={"user": text})


def persona(n: int) -> dict[str, str]:
    return {"name": f"Persona Number{n}", "description": f"Distinct customer type {n} " * 2,
            "rationale": f"Because of reason {n} and unique aspect {n * 7} " * 2}


def test_valid_answer_is_cached(llm_server: ScriptedLLM, make_client) -> None:  # type: ignore[no-untyped-def]
    llm_server.responder = lambda request: GOOD
    client = make_client()
    assert ask(client).summary.startswith("A small bakery")
    assert ask(client).summary.startswith("A small bakery")
    assert len(llm_server.requests) == 1, "the second call is served from the cache"
    assert client.usage.cache_hits == 1 and client.usage.requests == 1
    assert client.usage.prompt_tokens > 0 and client.usage.cost(client.settings) > 0
    sent = llm_server.requests[0]
    assert sent["model"] == "gpt-4o-mini"
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"]["properties"]["summary"]


def test_json_object_mode_sends_the_schema(llm_server: ScriptedLLM, make_client) -> None:  # type: ignore[no-untyped-def]
    llm_server.responder = lambda request: GOOD
    ask(make_client(response_format="json_object"))
    fmt = llm_server.requests[0]["response_format"]
    assert fmt["type"] == "json_object" and "summary" in fmt["schema"]["properties"]


def test_invalid_json_then_valid_feeds_the_error_back(llm_server: ScriptedLLM,
                                                      make_client) -> None:  # type: ignore[no-untyped-def]
    llm_server.queue.extend([Reply(content="Sure! here it is: {summary: nope"), Reply(GOOD)])
    client = make_client()
    assert ask(client).summary.startswith("A small bakery")
    assert len(llm_server.requests) == 2
    retry = llm_server.requests[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": "Sure! here it is: {summary: nope"}
    assert "not valid JSON" in retry[-1]["content"]


@pytest.mark.parametrize("count", [9, 0])
def test_persona_count_out_of_range_is_retried(llm_server: ScriptedLLM, make_client,  # type: ignore[no-untyped-def]
                                                count: int) -> None:
    bad = json.dumps({"personas": [persona(n) for n in range(count)]})
    good = json.dumps({"personas": [persona(n) for n in range(3)]})
    llm_server.queue.extend([Reply(bad), Reply(good)])
    out = make_client().complete(system="s", user="u", schema=personas_model(2, 7),
                                 prompt_version="p", cache_inputs="x")
    assert len(out.personas) == 3
    sent = llm_server.requests[0]["response_format"]["json_schema"]["schema"]
    assert sent["properties"]["personas"]["minItems"] == 2, "the count rule is in the schema"
    assert sent["properties"]["personas"]["maxItems"] == 7
    feedback = llm_server.requests[1]["messages"][-1]["content"]
    assert ("at most 7 items" in feedback) if count == 9 else ("at least 2 items" in feedback)


def test_gives_up_after_max_retries(llm_server: ScriptedLLM, make_client) -> None:  # type: ignore[no-untyped-def]
    llm_server.responder = lambda request: "not json"
    with pytest.raises(LLMOutputError, match="invalid output after 3 attempt"):
        ask(make_client(max_retries=2))
    assert len(llm_server.requests) == 3


def test_429_honours_retry_after(llm_server: ScriptedLLM, llm_settings: LLMSettings) -> None:
    llm_server.queue.append(Reply(status=429, headers={"Retry-After": "2"}))
    llm_server.responder = lambda request: GOOD
    slept: list[float] = []
    client = LLMClient(llm_settings, sleep=slept.append)
    assert ask(client).summary
    assert slept == [2.0]
    assert len(llm_server.requests) == 2


def test_500_backs_off_exponentially_then_fails(llm_server: ScriptedLLM,
                                                llm_settings: LLMSettings) -> None:
    llm_server.queue.extend([Reply(status=500)] * 10)
    slept: list[float] = []
    settings = llm_settings.model_copy(update={"http_retries": 3, "backoff_seconds": 1.0,
                                               "max_backoff_seconds": 3.0})
    with pytest.raises(BackendError, match="failed after 4 attempt"):
        ask(LLMClient(settings, sleep=slept.append))
    assert slept == [1.0, 2.0, 3.0], "exponential, capped at max_backoff_seconds"


def test_500_then_success(llm_server: ScriptedLLM, llm_settings: LLMSettings) -> None:
    llm_server.queue.append(Reply(status=500))
    llm_server.responder = lambda request: GOOD
    assert ask(LLMClient(llm_settings, sleep=lambda s: None)).summary
    assert len(llm_server.requests) == 2


def test_timeout_is_retried(llm_server: ScriptedLLM, llm_settings: LLMSettings) -> None:
    llm_server.queue.append(Reply(GOOD, delay=1.5))
    llm_server.responder = lambda request: GOOD
    client = LLMClient(llm_settings.model_copy(update={"timeout": 0.5}), sleep=lambda s: None)
    assert ask(client).summary
    assert client.usage.retries == 1
    assert len(llm_server.requests) == 2


def test_missing_key_without_base_url_is_a_config_error() -> None:
    from p4r.errors import ConfigError

    client = LLMClient(LLMSettings())
    assert not client.configured
    with pytest.raises(ConfigError, match="P4R_LLM__API_KEY"):
        ask(client)
