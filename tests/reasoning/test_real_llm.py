"""The whole offline pipeline against a real local model (opt-in: P4R_LLM__BASE_URL).

Start one with ``eval "$(scripts/local_llm.sh --background)"`` (llama-cpp-python serving
SmolLM2-135M-Instruct), then ``pytest -m llm``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import SHARED, require_shared, upsert

# Read before the autouse fixture clears P4R_* variables for isolation.
LLM_ENV = {k: v for k, v in os.environ.items() if k.startswith("P4R_LLM__")}

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif("P4R_LLM__BASE_URL" not in LLM_ENV,
                       reason="set P4R_LLM__BASE_URL to run against a real local model"),
]


def test_real_model_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minilm) -> None:  # type: ignore[no-untyped-def]
    from p4r.datasets import load_dataset
    from p4r.datasets.prepare import prepare_dataset
    from p4r.query import Reranker
    from p4r.reasoning.cache import ResponseCache
    from p4r.reasoning.client import LLMClient
    from p4r.reasoning.stages import Context, run_stages
    from p4r.settings import load_settings
    from p4r.store.edge import EdgeBackend
    from p4r.store.lifecycle import dataset_status

    for key, value in LLM_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("P4R_LLM__CONCURRENCY", "1")
    settings = load_settings()
    source = require_shared(SHARED / "amazon-2018-all-beauty" / "All_Beauty_5.json.gz")
    root = tmp_path / "beauty-mini"
    prepare_dataset("beauty-mini", source, kcore=3, dedupe_text=True, max_interactions=60,
                    seed=1, out=root)
    cache = ResponseCache(tmp_path / "llm.sqlite")
    client = LLMClient(settings.llm, cache)
    reports = run_stages(Context(root, "amazon", client, progress=False),
                         ["summary", "aspects", "personas", "align"])
    cache.close()
    print({r.stage: (r.done, r.failed, r.dropped) for r in reports}, client.usage.report(
        settings.llm))
    by_stage = {r.stage: r for r in reports}
    assert by_stage["summary"].done > 0 and by_stage["personas"].done > 0
    personas = [json.loads(x) for x in (root / "personas.jsonl").read_text().splitlines()]
    assert all(1 <= len(p["personas"]) <= 7 for p in personas)

    backend = EdgeBackend(tmp_path / "edge")
    data = load_dataset("beauty-mini", root)
    upsert(data, backend, minilm)
    status = dataset_status(backend, "beauty-mini")
    assert status["personas"] == data.persona_count > 0
    user = sorted(data.users)[0]
    result = Reranker("beauty-mini", backend).rerank(
        user_id=user, candidates=sorted(data.items), on_unknown="keep")
    assert result.items[0].explanation in {"persona", "summary"}
    backend.close()
