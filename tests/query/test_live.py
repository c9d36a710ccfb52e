"""Profiles in the user state, live interactions (read-your-writes, durable, kept by a
re-index), MaxSim."""

from __future__ import annotations

import numpy as np
import pytest

from p4r.encoder.profile import user_vector
from p4r.errors import InputError
from p4r.indexer import plan_points
from p4r.query import Reranker
from p4r.settings import EncoderSettings, QuerySettings
from p4r.store.base import Backend
from p4r.store.naming import point_id
from tests.conftest import upsert

CANDS = ["cafe-lumen", "tide-sushi", "taqueria-sol", "noodle-harbor", "crumb-and-co",
         "sunny-side-diner", "ironwood-steakhouse", "polar-scoop-gelato"]


@pytest.fixture
def live(backend: Backend, demo_dataset, tiny_encoder, tiny_models):  # type: ignore[no-untyped-def]
    upsert(demo_dataset, backend, tiny_encoder)
    reranker = Reranker("demo", backend, encoder=EncoderSettings(model=str(tiny_models["a"])))
    assert reranker.served.users is not None
    return reranker, reranker.served.users


def _decayed(encoder, dataset, user: str, extra: list[dict] | None = None) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The oracle: decayed mean over the user's whole history, from the encoder directly."""
    from p4r.encoder.templates import interaction_text

    history = [i for i in dataset.interactions if i.user_id == user]
    texts = [(i.timestamp, i.item_id, interaction_text(i)) for i in history]
    for e in extra or []:
        texts.append((e["timestamp"], e["item_id"], e["text_full"]))
    texts.sort(key=lambda t: (t[0], t[1]))
    return user_vector(encoder.encode([t[2] for t in texts]))


def test_profile_point_equals_the_decayed_mean(live, demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    reranker, _ = live
    for user in ("u-ana", "u-ben", "u-chloe", "u-dev"):
        expected = _decayed(tiny_encoder, demo_dataset, user)
        assert np.abs(reranker.user_vector(user) - expected).max() < 1e-6


def test_read_your_writes_and_idempotent_duplicates(live, demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    from p4r.datasets.models import Interaction
    from p4r.encoder.templates import interaction_text

    reranker, log = live
    before = reranker.rerank(user_id="u-ben", candidates=CANDS)
    event = {"user_id": "u-ben", "item_id": "taqueria-sol", "timestamp": 1.75e9,
             "text": "Fiery al pastor, late at night", "rating": 5.0}
    report = reranker.add_interactions([event])
    assert (report.accepted, report.duplicates, report.users) == (1, 0, ["u-ben"])
    summary = demo_dataset.items["taqueria-sol"].summary
    text = interaction_text(Interaction(user_id="u-ben", item_id="taqueria-sol",
                                        timestamp=1.75e9, text=event["text"],
                                        item_summary=summary))
    expected = _decayed(tiny_encoder, demo_dataset, "u-ben",
                        [{"timestamp": 1.75e9, "item_id": "taqueria-sol", "text_full": text}])
    assert np.abs(reranker.user_vector("u-ben") - expected).max() < 1e-6
    after = reranker.rerank(user_id="u-ben", candidates=CANDS)
    assert [i.score for i in after.items] != [i.score for i in before.items]
    profile = reranker.user_profile("u-ben")
    assert profile.interactions[-1].item_id == "taqueria-sol" and profile.live == 1
    again = reranker.add_interactions([event])
    assert (again.accepted, again.duplicates) == (0, 1)
    assert log.counts()["interactions"] == 19, "18 from the files, one live"
    # Another reranker (another process in production) sees the same profile.
    other = Reranker("demo", reranker.backend)
    assert np.abs(other.user_vector("u-ben") - expected).max() < 1e-6


def test_bad_live_interaction_names_the_field(live) -> None:  # type: ignore[no-untyped-def]
    reranker, log = live
    with pytest.raises(InputError, match=r"interactions\[0\]\.timestamp"):
        reranker.add_interactions([{"user_id": "u", "item_id": "cafe-lumen",
                                    "timestamp": float("nan")}])
    with pytest.raises(InputError, match=r"interactions\[0\]\.item_id"):
        reranker.add_interactions([{"user_id": "u", "item_id": "ghost", "timestamp": 1}])
    # One timestamp rule (issue 18): 1e300, 1e15 and -1 were stored as given.
    for stamp in (1e300, 1e15, -1):
        with pytest.raises(InputError, match=r"interactions\[0\]\.timestamp': timestamp "):
            reranker.add_interactions([{"user_id": "u", "item_id": "cafe-lumen",
                                        "timestamp": stamp}])
    # A lone surrogate in an id is a 400-class InputError naming the field, never a crash.
    for field in ("user_id", "item_id"):
        row = {"user_id": "u", "item_id": "cafe-lumen", "timestamp": 1, field: "x\ud800"}
        with pytest.raises(InputError, match=rf"interactions\[0\]\.{field}': a lone surrogate"):
            reranker.add_interactions([row])
    assert log.counts()["interactions"] == 18, "nothing is recorded when a row is refused"


def test_a_live_millisecond_timestamp_is_stored_as_seconds(live) -> None:  # type: ignore[no-untyped-def]
    reranker, log = live
    reranker.add_interactions([{"user_id": "u-ben", "item_id": "taqueria-sol",
                                "timestamp": 1_750_000_000_000}])  # what Date.now() sends
    assert [r.timestamp for r in log.interactions("u-ben")][-1] == 1_750_000_000.0


def test_reindex_keeps_live_interactions(live, demo_dataset, tiny_encoder, tiny_models) -> None:  # type: ignore[no-untyped-def]
    """Live interactions are user state, not catalog: a re-index keeps them (and builds no
    new catalog version for them); a new encoder re-embeds them."""
    from p4r.encoder.model import Encoder

    reranker, _ = live
    reranker.add_interactions([{"user_id": "u-new", "item_id": "cafe-lumen", "timestamp": 5,
                                "text": "quiet corner to work"}])
    report = upsert(demo_dataset, reranker.backend, tiny_encoder)
    assert (report.version, report.action) == (1, "unchanged")
    assert report.user_counts == {"interactions": 19, "profiles": 5}
    assert not reranker.refresh()
    assert reranker.user_profile("u-new").live == 1
    fresh = Reranker("demo", reranker.backend)
    assert np.allclose(fresh.user_vector("u-new"), reranker.user_vector("u-new"), atol=1e-6)
    other = Encoder(EncoderSettings(model=str(tiny_models["b"])))
    moved = upsert(demo_dataset, reranker.backend, other, reindex=True)
    assert moved.version == 2 and moved.user_counts["profiles"] == 5
    assert reranker.refresh(EncoderSettings(model=str(tiny_models["b"])))
    assert reranker.user_profile("u-new").interactions[-1].item_id == "cafe-lumen"


def test_profile_cache_is_bounded(backend: Backend, demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    upsert(demo_dataset, backend, tiny_encoder)
    # A server host caches profiles only with a staleness bound (profile_ttl).
    reranker = Reranker("demo", backend, QuerySettings(profile_cache_size=2, profile_ttl=60))
    for user in ("u-ana", "u-ben", "u-chloe", "u-dev"):
        reranker.rerank(user_id=user, candidates=["cafe-lumen"])
    assert reranker.cached_profiles == 2


@pytest.mark.parametrize("maxsim", [False, True], ids=["bounded", "maxsim"])
def test_top_k_equals_the_head_of_the_full_answer(backend: Backend, demo_dataset, tiny_encoder,  # type: ignore[no-untyped-def]
                                                  maxsim: bool) -> None:
    """Top k through a bounded persona query, or the MaxSim collection when built: the same
    items, personas and scores as the first k of the full answer."""
    upsert(demo_dataset, backend, tiny_encoder, maxsim=maxsim)
    reranker = Reranker("demo", backend)
    assert (reranker.served.items is not None) == maxsim
    for user in ("u-ana", "u-ben", "u-chloe", "u-dev"):
        full = reranker.rerank(user_id=user, candidates=CANDS)
        for k in (1, 2, 3):
            top = reranker.rerank(user_id=user, candidates=CANDS, k=k)
            assert [i.item_id for i in top.items] == [i.item_id for i in full.items[:k]]
            assert [i.persona for i in top.items] == [i.persona for i in full.items[:k]]
            assert np.allclose([i.score for i in top.items],
                               [i.score for i in full.items[:k]], atol=1e-6)


def test_id_scheme_keeps_slash_separated_keys_apart(demo_dataset) -> None:  # type: ignore[no-untyped-def]
    assert point_id("d", "x/P1", "P2") != point_id("d", "x", "P1/P2")
    from p4r.datasets.models import Persona

    a = Persona("x/P1", "P2", "A", "a", "a")
    b = Persona("x", "P1/P2", "B", "b", "b")
    demo_dataset.personas = {"x/P1": [a], "x": [b]}
    plan = plan_points(demo_dataset)
    assert len(plan["personas"]) == 2, "both personas survive"
    assert all(isinstance(p.id, int) and 0 <= p.id < 2**63 for p in plan["personas"])
