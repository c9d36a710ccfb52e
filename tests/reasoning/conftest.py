"""Fixtures for the reasoning tests: the scripted server and real-sample datasets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p4r.reasoning.cache import ResponseCache
from p4r.reasoning.client import LLMClient
from p4r.settings import LLMSettings
from tests.conftest import YELP, require_shared, write_jsonl
from tests.reasoning.llm_server import ScriptedLLM


@pytest.fixture
def llm_server() -> Iterator[ScriptedLLM]:
    server = ScriptedLLM().start()
    yield server
    server.stop()


@pytest.fixture
def llm_settings(llm_server: ScriptedLLM) -> LLMSettings:
    return LLMSettings(base_url=llm_server.base_url, api_key="test-key", model="gpt-4o-mini",
                       concurrency=1, timeout=5, backoff_seconds=0.01, max_backoff_seconds=0.05)


@pytest.fixture
def make_client(tmp_path: Path, llm_settings: LLMSettings):  # type: ignore[no-untyped-def]
    caches: list[ResponseCache] = []

    def build(**overrides: Any) -> LLMClient:
        cache = ResponseCache(tmp_path / "llm.sqlite")
        caches.append(cache)
        return LLMClient(llm_settings.model_copy(update=overrides), cache)

    yield build
    for cache in caches:
        cache.close()


def _rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (require_shared(YELP) / name).read_text().splitlines()]


@pytest.fixture
def yelp_raw(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A canonical dataset built from the real sample's inputs, plus the real gpt-4o-mini
    outputs to serve: summaries (2_summary), aspects (1_aspects), personas (3_personas via
    2.5_grouped reviews) and judge choices (4_selected_personas)."""
    summaries = _rows("2_summary.jsonl")[:8]
    grouped = {g["item_id"]: g for g in _rows("2.5_grouped.jsonl")}
    personas = {p["item_id"]: p for p in _rows("3_personas.jsonl") if p["item_id"] in grouped}
    items = [{"item_id": s["item_id"], "title": s["item_title"],
              "metadata": json.loads(s["item_description"]), "summary": ""} for s in summaries]
    reviews = []
    for row in _rows("1_aspects.jsonl")[:10]:
        reviews.append({"user_id": row["user_id"], "item_id": row["item_id"],
                        "rating": row["rating"], "timestamp": row["timestamp"],
                        "text": row["review_text"], "aspects": None})
    root = tmp_path / "yelp-raw"
    write_jsonl(root / "items.jsonl", items)
    write_jsonl(root / "reviews.jsonl", reviews)
    truth = {
        "summary": {s["item_title"]: s["item_summary"] for s in summaries},
        "aspects": {r["review_text"].strip(): r["extracted_aspects"]
                    for r in _rows("1_aspects.jsonl")},
        "grouped": grouped,
        "personas": personas,
        "selected": _rows("4_selected_personas.jsonl"),
    }
    return root, truth
