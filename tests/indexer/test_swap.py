"""Zero-downtime re-index: a reranker under load keeps answering and moves to the new version."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from p4r.query import Reranker, RerankResult
from p4r.settings import EncoderSettings
from p4r.store.base import Backend
from p4r.store.lifecycle import prune_versions
from p4r.store.naming import collection_name
from tests.conftest import upsert

USERS = ["u-ben", "u-chloe", "u-dev", "u-ana"]


@pytest.fixture(scope="module")
def encoder_b(tiny_models):  # type: ignore[no-untyped-def]
    """The second tiny encoder: same dimension, other weights, so a re-index is needed."""
    from p4r.encoder.model import Encoder

    return Encoder(EncoderSettings(model=str(tiny_models["b"]), threads=1))


def ranking(result: RerankResult) -> tuple[list[str], np.ndarray]:
    """Item order and scores of a result, for comparing answers across versions."""
    return ([r.item_id for r in result.items],
            np.array([r.score if r.score is not None else np.nan for r in result.items]))


def same(a: RerankResult, b: RerankResult) -> bool:
    """Whether two results rank the same items with the same scores."""
    (ids_a, scores_a), (ids_b, scores_b) = ranking(a), ranking(b)
    return ids_a == ids_b and bool(np.allclose(scores_a, scores_b, atol=1e-5))


@dataclass
class Load:
    """What the serving loop saw: one (user, collection served, result) per request."""

    seen: list[tuple[str, str, RerankResult]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    refreshes: int = 0


def test_reindex_under_load(  # type: ignore[no-untyped-def]
    backend: Backend, demo_dataset, tiny_encoder, encoder_b, tiny_models
) -> None:
    upsert(demo_dataset, backend, tiny_encoder)
    settings_a = EncoderSettings(model=str(tiny_models["a"]))
    settings_b = EncoderSettings(model=str(tiny_models["b"]))
    candidates = sorted(demo_dataset.personas)
    reranker = Reranker("demo", backend, encoder=settings_a)
    expected_v1 = {u: reranker.rerank(user_id=u, candidates=candidates) for u in USERS}
    load, stop = Load(), threading.Event()

    def serve() -> None:
        i = 0
        while not stop.is_set():
            user = USERS[i % len(USERS)]
            i += 1
            try:
                # The serving process is deployed with the new encoder's settings; they are
                # used only once the alias has moved to a version built with it.
                if reranker.refresh(encoder=settings_b):
                    load.refreshes += 1
                served = reranker.personas
                result = reranker.rerank(user_id=user, candidates=candidates)
                load.seen.append((user, served, result))
            except BaseException as exc:
                load.errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        while not load.seen and not load.errors:
            time.sleep(0.001)
        before = len(load.seen)
        report = upsert(demo_dataset, backend, encoder_b, reindex=True, batch_size=4)
        swapped_at = len(load.seen)
        deadline = time.monotonic() + 30
        while len(load.seen) < swapped_at + 2 * len(USERS) and not load.errors:
            assert time.monotonic() < deadline, "serving loop stalled"
            time.sleep(0.001)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert load.errors == [], load.errors[:3]
    assert report.version == 2 and report.action == "created"
    assert swapped_at > before, "requests were served while the new version was built"

    v1, v2 = (collection_name("demo", "personas", v) for v in (1, 2))
    fresh = Reranker("demo", backend, encoder=settings_b)
    expected_v2 = {u: fresh.rerank(user_id=u, candidates=candidates) for u in USERS}
    assert not all(same(expected_v1[u], expected_v2[u]) for u in USERS), "the encoders differ"
    for user, served, result in load.seen:
        assert [r.explanation for r in result.items] == ["persona"] * len(candidates)
        assert sorted(r.item_id for r in result.items) == candidates and not result.unknown
        assert served in (v1, v2)
        # each answer is wholly one version's: never a mix of old and new collections
        assert same(result, (expected_v1 if served == v1 else expected_v2)[user])
    served_order = [served for _, served, _ in load.seen]
    assert served_order == sorted(served_order, key=[v1, v2].index), "never back to v1"
    assert load.refreshes == 1 and served_order[-1] == v2
    assert reranker.encoder_settings == settings_b and reranker.fingerprint is not None
    assert reranker.fingerprint.as_dict() == encoder_b.fingerprint.as_dict()


def test_reranker_keeps_its_version_until_refresh(  # type: ignore[no-untyped-def]
    backend: Backend, demo_dataset, tiny_encoder, tiny_models
) -> None:
    upsert(demo_dataset, backend, tiny_encoder, full=True)
    reranker = Reranker("demo", backend, encoder=EncoderSettings(model=str(tiny_models["a"])))
    before = reranker.rerank(user_id="u-ben", candidates=["tide-sushi", "cafe-lumen"])
    assert reranker.refresh() is False, "nothing moved"
    demo_dataset.personas.pop("tide-sushi")
    upsert(demo_dataset, backend, tiny_encoder, full=True)
    again = reranker.rerank(user_id="u-ben", candidates=["tide-sushi", "cafe-lumen"])
    assert same(before, again), "still on version 1"
    assert reranker.refresh() is True and reranker.personas.endswith("_v2")
    after = reranker.rerank(user_id="u-ben", candidates=["tide-sushi", "cafe-lumen"])
    assert [r.explanation for r in after.items] == ["persona", "summary"], "tide-sushi lost its"
    assert reranker.refresh() is False


def test_refresh_to_another_encoder_needs_its_settings(  # type: ignore[no-untyped-def]
    backend: Backend, demo_dataset, tiny_encoder, encoder_b, tiny_models
) -> None:
    upsert(demo_dataset, backend, tiny_encoder)
    settings_a = EncoderSettings(model=str(tiny_models["a"]))
    reranker = Reranker("demo", backend, encoder=settings_a)
    unchecked = Reranker("demo", backend, encoder=settings_a)
    upsert(demo_dataset, backend, encoder_b, reindex=True)
    # user_id requests encode nothing: the switch needs no encoder...
    assert reranker.refresh() is True and reranker.personas.endswith("_v2")
    assert unchecked.refresh() is True and unchecked.personas.endswith("_v2")
    prune_versions(backend, "demo")
    assert len(reranker.rerank(user_id="u-ana", candidates=["cafe-lumen"]).items) == 1
    # ...and text is embedded with the encoder that built the version (found from the
    # folder the index recorded), whatever the reranker was configured with.
    history = [{"item_id": "cafe-lumen", "text": "great coffee", "timestamp": 1}]
    settings_b = EncoderSettings(model=str(tiny_models["b"]))
    fixed = Reranker("demo", backend, encoder=settings_b)
    assert reranker.rerank(history=history, candidates=["tide-sushi"]) == fixed.rerank(
        history=history, candidates=["tide-sushi"])
