"""Live reviews as the paper does them (issue 19): a live interaction recorded with text only
gets its aspects from the LLM (the scripted server, through the real openai client), is
re-embedded from them with the training template, and its user's profile follows. Idempotent
and resumable, on both backends."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from p4r.datasets.models import Interaction
from p4r.encoder.profile import user_vector
from p4r.encoder.templates import interaction_text
from p4r.query import Reranker
from p4r.query.live_aspects import extract_live_aspects
from p4r.reasoning.runner import Context
from p4r.store.base import Backend
from tests.conftest import DEMO, upsert
from tests.reasoning.llm_server import ScriptedLLM, user_text

PASTOR = "Fiery al pastor, late at night, with friends"
LATTE = "ok."  # says nothing: an answer with 4 of 5 slots empty is too empty to keep
ASPECTS = {"cuisine_category": "Mexican street food",
           "specific_dishes_or_attributes": "al pastor (liked)",
           "visit_purpose": "late dinner", "quality_criteria": "spice",
           "visit_context": "with friends"}
EVENTS = [
    {"user_id": "u-ben", "item_id": "taqueria-sol", "timestamp": 1.75e9, "text": PASTOR,
     "rating": 5.0},
    {"user_id": "u-ana", "item_id": "cafe-lumen", "timestamp": 1.75e9, "text": LATTE},
    {"user_id": "u-dev", "item_id": "tide-sushi", "timestamp": 1.75e9, "text": "fresh",
     "aspects": {"cuisine_category": "sushi"}},  # came with aspects: not pending
    {"user_id": "u-chloe", "item_id": "cafe-lumen", "timestamp": 1.75e9},  # no text
]


def respond(request: dict[str, Any]) -> str:
    return json.dumps(ASPECTS if PASTOR in user_text(request)
                      else {"cuisine_category": "coffee"})


@pytest.fixture
def live(backend: Backend, demo_dataset, tiny_encoder, tiny_models, llm_server: ScriptedLLM,  # type: ignore[no-untyped-def]
         make_client):
    from p4r.settings import EncoderSettings

    upsert(demo_dataset, backend, tiny_encoder)
    reranker = Reranker("demo", backend, encoder=EncoderSettings(model=str(tiny_models["a"])))
    reranker.add_interactions(EVENTS)
    llm_server.responder = respond
    return reranker, Context(DEMO, "yelp", make_client(), progress=False)


def _oracle(reranker: Reranker, encoder, user: str, item: str, text: str,  # type: ignore[no-untyped-def]
            aspects: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """The interaction's vector from its aspects with the training template, and the decayed
    mean of the user's interactions with it."""
    summary = reranker.users.summaries(reranker.served, [item])[item]
    vector = encoder.encode([interaction_text(Interaction(
        user_id=user, item_id=item, timestamp=1.75e9, text=text, aspects=aspects,
        item_summary=summary))])[0]
    store = reranker.served.users
    assert store is not None
    rows = []
    for record in store.interactions(user):
        key = record.key("demo")
        rows.append(vector if record.item_id == item and record.timestamp == 1.75e9
                    else store.vectors([key])[key])
    return vector, user_vector(np.stack(rows))


def test_pending_live_reviews_get_aspects_and_the_profile_follows(live, tiny_encoder,  # type: ignore[no-untyped-def]
                                                                  llm_server) -> None:
    reranker, ctx = live
    store = reranker.served.users
    assert {r.item_id for r in store.pending_live(10)} == {"taqueria-sol", "cafe-lumen"}
    before = reranker.user_vector("u-ben")
    report = extract_live_aspects(reranker, ctx, batch_size=1)
    assert (report.extracted, report.empty, report.failed, report.batches) == (1, 1, 0, 2)
    assert len(llm_server.requests) == 2
    assert store.pending_live(10) == []
    ben = next(r for r in store.interactions("u-ben") if r.item_id == "taqueria-sol"
               and r.timestamp == 1.75e9)
    assert ben.aspects is not None and {k: ben.aspects[k] for k in ASPECTS} == ASPECTS
    vector, profile = _oracle(reranker, tiny_encoder, "u-ben", "taqueria-sol", PASTOR,
                              ben.aspects)
    key = ben.key("demo")
    assert np.abs(store.vectors([key])[key] - vector).max() < 1e-6
    after = Reranker("demo", reranker.backend)  # another process sees it at once
    assert np.abs(after.user_vector("u-ben") - profile).max() < 1e-6
    assert np.abs(after.user_vector("u-ben") - before).max() > 1e-4
    # Too empty to keep: all slots null, the text still embedded (as the aspects stage drops).
    ana = next(r for r in store.interactions("u-ana") if r.item_id == "cafe-lumen"
               and r.timestamp == 1.75e9)
    assert ana.aspects is not None and set(ana.aspects.values()) == {None}
    vector, profile = _oracle(reranker, tiny_encoder, "u-ana", "cafe-lumen", LATTE, None)
    assert np.abs(store.vectors([ana.key("demo")])[ana.key("demo")] - vector).max() < 1e-6
    assert np.abs(after.user_vector("u-ana") - profile).max() < 1e-6
    # Idempotent: nothing is pending, nothing is asked.
    again = extract_live_aspects(reranker, ctx)
    assert (again.extracted, again.empty, again.batches) == (0, 0, 0)
    assert len(llm_server.requests) == 2


def test_an_interrupted_run_resumes_without_asking_twice(live, llm_server) -> None:  # type: ignore[no-untyped-def]
    """Answers are cached as they arrive and each batch is committed: a run stopped before
    its batch was written re-asks nothing; one stopped after a batch keeps that batch."""
    reranker, ctx = live
    store = reranker.served.users
    real = reranker.served.encoder

    class Interrupted:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def encode(self, texts: Any) -> np.ndarray:
            raise KeyboardInterrupt

    reranker.served.encoder = Interrupted()  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        extract_live_aspects(reranker, ctx)
    reranker.served.encoder = real
    assert len(store.pending_live(10)) == 2, "nothing was written"
    assert len(llm_server.requests) == 2

    def stop(report: Any) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_live_aspects(reranker, ctx, batch_size=1, on_batch=stop)
    assert len(store.pending_live(10)) == 1, "the first batch was committed"
    report = extract_live_aspects(reranker, ctx)
    assert report.extracted + report.empty == 1 and store.pending_live(10) == []
    assert len(llm_server.requests) == 2, "every answer came from the cache"


def test_invalid_answers_stay_pending_and_the_run_ends(live, llm_server, make_client) -> None:  # type: ignore[no-untyped-def]
    reranker, _ = live
    llm_server.responder = lambda r: "not json" if PASTOR in user_text(r) else respond(r)
    ctx = Context(DEMO, "yelp", make_client(max_retries=1), progress=False)
    report = extract_live_aspects(reranker, ctx, batch_size=1)
    assert (report.failed, report.empty, report.extracted) == (1, 1, 0)
    assert "invalid output" in report.notes[0]
    assert [r.item_id for r in reranker.served.users.pending_live(10)] == ["taqueria-sol"]
    assert extract_live_aspects(reranker, ctx, limit=1).failed == 1, "--limit bounds a run"


def test_a_forgotten_user_is_not_brought_back(live, llm_server) -> None:  # type: ignore[no-untyped-def]
    reranker, ctx = live
    store = reranker.served.users
    asked: list[str] = []

    def respond_then_forget(request: dict[str, Any]) -> str:
        user = "u-ben" if PASTOR in user_text(request) else "u-ana"
        asked.append(user)
        reranker.forget(user)  # forgotten while their review is being read
        return respond(request)

    llm_server.responder = respond_then_forget
    report = extract_live_aspects(reranker, ctx, limit=1)
    assert report.skipped == 1 and (report.extracted, report.empty) == (0, 0)
    assert store.interactions(asked[0]) == [] and store.profiles([asked[0]]) == {}


def test_reason_live_command(tiny_models, llm_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from p4r.cli.index import main as index_cli
    from p4r.cli.reason import main as reason_cli
    from p4r.query import open_reranker
    from p4r.settings import load_settings

    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
    monkeypatch.setenv("P4R_LLM__BASE_URL", llm_server.base_url)
    monkeypatch.setenv("P4R_LLM__API_KEY", "test-key")
    assert CliRunner().invoke(index_cli, ["upsert", "-d", "demo"]).exit_code == 0
    open_reranker(load_settings(), "demo").add_interactions(EVENTS)
    llm_server.responder = respond
    out = CliRunner().invoke(reason_cli, ["live", "-d", "demo", "--json"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert (report["extracted"], report["empty"], report["domain"]) == (1, 1, "yelp")
    again = CliRunner().invoke(reason_cli, ["live", "-d", "demo"], catch_exceptions=False)
    assert "0 live interaction(s) re-embedded" in again.output
    monkeypatch.delenv("P4R_LLM__BASE_URL")
    monkeypatch.delenv("P4R_LLM__API_KEY")
    unset = CliRunner().invoke(reason_cli, ["live", "-d", "demo"])
    assert unset.exit_code != 0 and "no LLM is configured" in unset.output
