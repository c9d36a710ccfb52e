"""Issue 19 served: the interests mode, "because" and proportional lists, on both backends,
against the numpy oracles of :mod:`p4r.query.interests` and :mod:`p4r.query.diversify`.

The oracle reads nothing from the store: persona, summary and interaction vectors come from
the encoder (through the test embedding cache), histories from the dataset files (plus the
live interactions a test records), in the order every profile is built in (time, item id).
"""

from __future__ import annotations

import asyncio
import copy
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from p4r.datasets import load_dataset
from p4r.datasets.models import Dataset
from p4r.encoder.cache import encode_cached
from p4r.errors import InputError
from p4r.indexer import plan_points
from p4r.query import Reranker, RerankRequest, RerankResult
from p4r.query.diversify import proportional_order
from p4r.query.interests import (
    attention_scores,
    best_persona_sims,
    closest_interaction,
    nearest_interest,
    recency_prior,
    user_interests,
)
from p4r.settings import QuerySettings
from p4r.store.base import Backend
from tests.conftest import YELP, open_test_backend, require_shared, upsert

CANDS = ["cafe-lumen", "tide-sushi", "taqueria-sol", "noodle-harbor", "crumb-and-co",
         "sunny-side-diner", "ironwood-steakhouse", "polar-scoop-gelato"]
USERS = ["u-ana", "u-ben", "u-chloe", "u-dev"]


# -- the oracle --------------------------------------------------------------------------------
@dataclass
class Catalog:
    """Every item's persona vectors (and ids) and summary vector, from the encoder."""

    personas: dict[str, list[tuple[str, np.ndarray]]]
    summaries: dict[str, np.ndarray]
    histories: dict[str, list[tuple[float, str, np.ndarray]]]

    def matrix(self, item: str) -> np.ndarray:
        """The item's persona rows, or its summary as its one persona."""
        if item in self.personas:
            return np.stack([v for _, v in self.personas[item]])
        return self.summaries[item][None, :]

    def history(self, user: str, last_n: int = 10) -> tuple[np.ndarray, list[tuple[str, float]]]:
        """The user's last n interaction vectors, oldest first, and (item, time) of each."""
        rows = sorted(self.histories[user], key=lambda r: (r[0], r[1]))[-last_n:]
        return np.stack([r[2] for r in rows]).astype(np.float64), [(r[1], r[0]) for r in rows]


def catalog_of(data: Dataset, encoder, cache) -> Catalog:  # type: ignore[no-untyped-def]
    plan = plan_points(data)

    def vectors(points):  # type: ignore[no-untyped-def]
        return encode_cached([p.text for p in points], encoder.fingerprint, encoder.encode,
                             cache) if cache is not None else encoder.encode(
            [p.text for p in points])

    personas: dict[str, list[tuple[str, np.ndarray]]] = {}
    for p, v in zip(plan["personas"], vectors(plan["personas"]), strict=True):
        personas.setdefault(p.payload["item_id"], []).append((p.payload["persona_id"], v))
    summaries = {p.payload["item_id"]: v for p, v in zip(plan["summaries"],
                                                         vectors(plan["summaries"]), strict=True)}
    histories: dict[str, list[tuple[float, str, np.ndarray]]] = {}
    for p, v in zip(plan["interactions"], vectors(plan["interactions"]), strict=True):
        histories.setdefault(p.payload["user_id"], []).append(
            (float(p.payload["ts"]), p.payload["item_id"], v))
    return Catalog(personas, summaries, histories)


@dataclass
class Expected:
    """One oracle row: item, score, persona id (None: summary), because (item, time, weight),
    and the winning vector."""

    item: str
    score: float
    persona: str | None
    because: tuple[str, float, float]
    winning: np.ndarray


def oracle(cat: Catalog, user: str, cands: list[str], mode: str, query: QuerySettings,
           diversify: bool = False, k: int | None = None) -> list[Expected]:
    """The answer the served pipeline must give (module doc of p4r.query.pipeline)."""
    history, recent = cat.history(user, query.last_n)
    ids = [c for c in dict.fromkeys(cands) if c in cat.personas or c in cat.summaries]
    matrices = [cat.matrix(i) for i in ids]
    if mode == "interests":
        sims, best = best_persona_sims(history, matrices)
        att = attention_scores(sims, recency_prior(len(history), query.gamma))
        scores = att.scores
        chosen = [int(best[att.winner[i], i]) for i in range(len(ids))]
    else:
        w = query.gamma ** np.arange(len(history) - 1, -1, -1)
        profile = w @ history
        profile /= np.linalg.norm(profile)
        cosines = [(m / np.linalg.norm(m, axis=1, keepdims=True)) @ profile for m in matrices]
        scores = np.array([c.max() for c in cosines])
        chosen = [int(np.argmax(c)) for c in cosines]
    winning = np.stack([m[j] for m, j in zip(matrices, chosen, strict=True)])
    if mode == "interests":
        because = [(*recent[int(att.winner[i])], float(att.weight[i])) for i in range(len(ids))]
    else:
        index, cosine = closest_interaction(history, winning)
        because = [(*recent[int(j)], float(c)) for j, c in zip(index, cosine, strict=True)]
    rows = [Expected(i, float(s), cat.personas[i][j][0] if i in cat.personas else None, b, v)
            for i, s, j, b, v in zip(ids, scores, chosen, because, winning, strict=True)]
    rows.sort(key=lambda r: (-r.score, r.item))
    if diversify and rows:
        interests = user_interests(history, query.interests, query.gamma, query.last_n)
        labels = nearest_interest(np.stack([r.winning for r in rows]), interests.centroids)
        top = [int(i) for i in proportional_order(np.array([r.score for r in rows]), labels,
                                                  interests.weights, k or len(rows))]
        rows = [rows[i] for i in top] + [r for i, r in enumerate(rows) if i not in set(top)]
    return rows[:k] if k is not None else rows


def check(result: RerankResult, expected: list[Expected], *, tol: float = 1e-5) -> None:
    """Items in order, scores and because weights to ``tol``, personas, because items."""
    got = [i for i in result.items if i.score is not None]
    assert [i.item_id for i in got] == [e.item for e in expected]
    for item, want in zip(got, expected, strict=True):
        assert item.score == pytest.approx(want.score, abs=tol), item.item_id
        if want.persona is None:
            assert item.explanation == "summary" and item.persona is None
        else:
            assert item.explanation == "persona" and item.persona is not None
            assert item.persona.persona_id == want.persona, item.item_id
        assert item.because is not None
        assert (item.because.item_id, item.because.timestamp) == want.because[:2], item.item_id
        assert item.because.weight == pytest.approx(want.because[2], abs=tol), item.item_id


# -- real data: exactness on both backends, through MaxSim and through the personas ------------
@pytest.fixture(scope="module")
def _yelp_subset() -> Dataset:
    data = load_dataset("yelp", require_shared(YELP))
    users = sorted(data.users)[:8]
    data.interactions = [i for i in data.interactions if i.user_id in users]
    keep = set(data.personas) | {i.item_id for i in data.interactions}
    data.items = {k: v for k, v in data.items.items() if k in keep}
    return data


@pytest.fixture(params=["tiny", pytest.param("minilm", marks=pytest.mark.slow)])
def real_data_encoder(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """The tiny 32-d test encoder (fast tier) and the real MiniLM (slow tier)."""
    return request.getfixturevalue("tiny_encoder" if request.param == "tiny" else "minilm")


@pytest.mark.parametrize("maxsim", [True, False], ids=["maxsim", "personas"])
def test_modes_equal_the_numpy_oracles_on_real_data(  # type: ignore[no-untyped-def]
        backend: Backend, _yelp_subset: Dataset, real_data_encoder, embedding_cache,
        maxsim: bool) -> None:
    """Interests mode (attention over the last n vectors: MaxSim collection, or the
    filtered-persona fallback), "because" in both modes and proportional lists equal the
    numpy oracles: order, scores and weights to 1e-5, winning personas, the past item."""
    data = copy.deepcopy(_yelp_subset)
    encoder = real_data_encoder
    upsert(data, backend, encoder, cache=embedding_cache, maxsim=True)
    cat = catalog_of(data, encoder, embedding_cache)
    query = QuerySettings(maxsim=maxsim)
    reranker = Reranker("yelp", backend, query=query)
    assert (reranker.served.items is not None) == maxsim
    rng = random.Random(1)
    persona_items = sorted(cat.personas)
    plain = sorted(set(cat.summaries) - set(cat.personas))
    requests = []
    for user in sorted(data.users):
        cands = rng.sample(persona_items, 16) + rng.sample(plain, 4)
        rng.shuffle(cands)
        requests.append(RerankRequest(candidates=cands, user_id=user))
    reranker.rerank_batch(requests)  # see test_reranker: local mode's first search
    cases = [("interests", None, None), ("default", None, None), ("default", "proportional", 6),
             ("interests", "proportional", None), ("interests", None, 5)]
    for mode, diversify, k in cases:
        batch = [replace(r, mode=mode, diversify=diversify, k=k) for r in requests]
        for request, result in zip(batch, reranker.rerank_batch(batch), strict=True):
            assert request.user_id is not None
            check(result, oracle(cat, request.user_id, list(request.candidates), mode, query,
                                 diversify is not None, k))


# -- the demo: behaviour on both backends --------------------------------------------------------
@pytest.fixture
def demo(backend: Backend, demo_dataset, tiny_encoder) -> tuple[Reranker, Catalog]:  # type: ignore[no-untyped-def]
    upsert(demo_dataset, backend, tiny_encoder, maxsim=True)
    return Reranker("demo", backend), catalog_of(demo_dataset, tiny_encoder, None)


def test_mode_per_request_and_from_the_settings(demo, backend: Backend) -> None:  # type: ignore[no-untyped-def]
    reranker, cat = demo
    query = QuerySettings()
    for user in USERS:
        check(reranker.rerank(user_id=user, candidates=CANDS, mode="interests"),
              oracle(cat, user, CANDS, "interests", query))
        check(reranker.rerank(user_id=user, candidates=CANDS),
              oracle(cat, user, CANDS, "default", query))
    by_setting = Reranker("demo", backend, QuerySettings(user_mode="interests",
                                                         diversify="proportional"))
    for user in USERS:
        check(by_setting.rerank(user_id=user, candidates=CANDS, k=4),
              oracle(cat, user, CANDS, "interests", query, True, 4))
        check(by_setting.rerank(user_id=user, candidates=CANDS, mode="default",
                                diversify="none"), oracle(cat, user, CANDS, "default", query))


def test_unknown_mode_names_the_request(demo) -> None:  # type: ignore[no-untyped-def]
    reranker, _ = demo
    with pytest.raises(InputError, match="field 'mode': 'attention' is not one of") as info:
        reranker.rerank_batch([RerankRequest(CANDS, user_id="u-ana"),
                               RerankRequest(CANDS, user_id="u-ben", mode="attention")])  # type: ignore[arg-type]
    assert info.value.request_index == 1
    with pytest.raises(InputError, match="field 'diversify'"):
        reranker.rerank(user_id="u-ana", candidates=CANDS, diversify="mmr")  # type: ignore[arg-type]


def test_vector_requests_have_no_because_and_keep_the_default_mode(demo) -> None:  # type: ignore[no-untyped-def]
    reranker, _ = demo
    vector = reranker.user_vector("u-chloe")
    plain = reranker.rerank(vector=vector, candidates=CANDS)
    for mode, diversify in (("interests", None), ("default", "proportional")):
        other = reranker.rerank(vector=vector, candidates=CANDS, mode=mode,  # type: ignore[arg-type]
                                diversify=diversify)  # type: ignore[arg-type]
        assert other == plain
    assert all(i.because is None for i in plain.items)
    by_user = reranker.rerank(user_id="u-chloe", candidates=CANDS)
    assert [(i.item_id, i.persona) for i in by_user.items] == \
        [(i.item_id, i.persona) for i in plain.items]


def test_history_requests_use_their_embedded_rows(demo, demo_dataset) -> None:  # type: ignore[no-untyped-def]
    """A raw history is embedded and answers what the indexed user answers, in both modes
    and with proportional lists, "because" included."""
    reranker, _ = demo
    for user in USERS:
        history = [{"item_id": i.item_id, "timestamp": i.timestamp, "aspects": i.aspects,
                    "text": i.text} for i in demo_dataset.interactions if i.user_id == user]
        for mode, diversify in (("interests", None), ("default", None),
                                ("interests", "proportional")):
            indexed = reranker.rerank(user_id=user, candidates=CANDS, mode=mode,  # type: ignore[arg-type]
                                      diversify=diversify)  # type: ignore[arg-type]
            fresh = reranker.rerank(history=list(reversed(history)), candidates=CANDS,
                                    mode=mode, diversify=diversify)  # type: ignore[arg-type]
            assert [i.item_id for i in fresh.items] == [i.item_id for i in indexed.items]
            assert [i.persona for i in fresh.items] == [i.persona for i in indexed.items]
            for a, b in zip(fresh.items, indexed.items, strict=True):
                assert a.score == pytest.approx(b.score, abs=1e-5)
                assert a.because is not None and b.because is not None
                assert (a.because.item_id, a.because.timestamp) == \
                    (b.because.item_id, b.because.timestamp)
                assert a.because.weight == pytest.approx(b.because.weight, abs=1e-5)


def test_live_interactions_count_in_the_interests_mode(demo, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    """A live interaction is one of the history rows at once: the next request's attention
    (and "because") include it, on any reranker of the store."""
    from p4r.datasets.models import Interaction
    from p4r.encoder.templates import interaction_text

    reranker, cat = demo
    event = {"user_id": "u-ben", "item_id": "tide-sushi", "timestamp": 1.75e9,
             "text": "Omakase at the counter, every bite perfect"}
    reranker.add_interactions([event])
    summary = reranker.users.summaries(reranker.served, ["tide-sushi"])["tide-sushi"]
    text = interaction_text(Interaction(user_id="u-ben", item_id="tide-sushi",
                                        timestamp=1.75e9, text=event["text"],
                                        item_summary=summary))
    cat.histories["u-ben"].append((1.75e9, "tide-sushi", tiny_encoder.encode([text])[0]))
    other = Reranker("demo", reranker.backend)
    for mode in ("interests", "default"):
        result = other.rerank(user_id="u-ben", candidates=CANDS, mode=mode)  # type: ignore[arg-type]
        check(result, oracle(cat, "u-ben", CANDS, mode, QuerySettings()))
    sushi = next(i for i in other.rerank(user_id="u-ben", candidates=CANDS,
                                         mode="interests").items if i.item_id == "tide-sushi")
    assert sushi.because is not None and sushi.because.item_id == "tide-sushi"


def test_async_path_answers_what_the_sync_one_does(demo) -> None:  # type: ignore[no-untyped-def]
    reranker, _ = demo
    requests = [RerankRequest(candidates=[*CANDS, "nowhere"], user_id=u, k=k, mode=m,
                              diversify=d)  # type: ignore[arg-type]
                for u in USERS for k in (None, 3) for m in ("interests", "default")
                for d in ("none", "proportional")]
    sync = reranker.rerank_batch(requests, on_unknown="keep")
    assert asyncio.run(reranker.arerank_batch(requests, on_unknown="keep")) == sync


def test_a_batch_mixes_modes_and_equals_single_calls(demo) -> None:  # type: ignore[no-untyped-def]
    reranker, _ = demo
    requests = [RerankRequest(candidates=CANDS, user_id=u, mode=m, k=3)  # type: ignore[arg-type]
                for u in USERS for m in ("interests", "default")]
    batch = reranker.rerank_batch(requests)
    assert batch == [reranker.rerank_batch([r])[0] for r in requests]


def test_unknown_candidates_in_the_interests_mode(demo) -> None:  # type: ignore[no-untyped-def]
    reranker, _ = demo
    kept = reranker.rerank(user_id="u-ana", candidates=["ghost", *CANDS], mode="interests",
                           on_unknown="keep")
    assert kept.unknown == ["ghost"] and kept.items[-1].explanation == "unscored"
    assert kept.items[-1].because is None
    with pytest.raises(InputError, match="unknown to dataset 'demo': ghost") as info:
        reranker.rerank_batch([RerankRequest(CANDS, user_id="u-ana"),
                               RerankRequest(["ghost"], user_id="u-ben", mode="interests")])
    assert info.value.request_index == 1


def test_a_catalog_delta_answers_what_a_rebuild_does_in_every_mode(  # type: ignore[no-untyped-def]
        two, demo_dataset, tiny_encoder) -> None:
    """Through the views: an overlay (Edge) or an in-place delta (server) over a MaxSim
    version answers the interests mode and proportional lists as a full rebuild does."""
    from tests.indexer.test_delta import _edit

    delta_store, full_store = two
    upsert(demo_dataset, delta_store, tiny_encoder, maxsim=True)
    changed = _edit(demo_dataset, 2)
    assert upsert(changed, delta_store, tiny_encoder, maxsim=True,
                  delta_limit=0.5).action == "delta"
    upsert(changed, full_store, tiny_encoder, maxsim=True, full=True)
    cands = sorted({*changed.items, *changed.personas})
    for query in (QuerySettings(), QuerySettings(maxsim=False)):
        answers = []
        for store in (delta_store, full_store):
            reranker = Reranker("demo", store, query)
            answers.append([reranker.rerank(user_id=u, candidates=cands, mode=m, diversify=d,  # type: ignore[arg-type]
                                            k=k)
                            for u in USERS for m in ("interests", "default")
                            for d in ("none", "proportional") for k in (None, 4)])
        for a, b in zip(*answers, strict=True):
            assert [(i.item_id, i.explanation, i.persona) for i in a.items] == \
                [(i.item_id, i.explanation, i.persona) for i in b.items]
            assert np.allclose([i.score for i in a.items], [i.score for i in b.items], atol=1e-6)
            assert [i.because.item_id if i.because else None for i in a.items] == \
                [i.because.item_id if i.because else None for i in b.items]


def test_edge_and_server_agree_in_every_mode(tmp_path: Path, demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    stores = [open_test_backend(kind, tmp_path) for kind in ("edge", "server-memory")]
    answers = []
    for store in stores:
        upsert(demo_dataset, store, tiny_encoder, maxsim=True)
        reranker = Reranker("demo", store)
        answers.append(reranker.rerank_batch([
            RerankRequest(candidates=CANDS, user_id=u, mode=m, diversify=d, k=k)  # type: ignore[arg-type]
            for u in USERS for m in ("interests", "default") for d in ("none", "proportional")
            for k in (None, 3)]))
    for a, b in zip(*answers, strict=True):
        assert [(i.item_id, i.persona, i.because and i.because.item_id) for i in a.items] == \
            [(i.item_id, i.persona, i.because and i.because.item_id) for i in b.items]
        assert np.allclose([i.score for i in a.items], [i.score for i in b.items], atol=1e-5)
    for store in stores:
        store.close()


def test_because_can_be_switched_off_for_the_default_mode(demo, backend: Backend) -> None:  # type: ignore[no-untyped-def]
    reranker, _ = demo
    without = Reranker("demo", backend, QuerySettings(because=False))
    for user in USERS:
        for mode, diversify in (("default", "none"), ("interests", "none"),
                                ("default", "proportional")):
            on = reranker.rerank(user_id=user, candidates=CANDS, mode=mode,  # type: ignore[arg-type]
                                 diversify=diversify)  # type: ignore[arg-type]
            off = without.rerank(user_id=user, candidates=CANDS, mode=mode,  # type: ignore[arg-type]
                                 diversify=diversify)  # type: ignore[arg-type]
            assert [(i.item_id, i.score, i.persona) for i in off.items] == \
                [(i.item_id, i.score, i.persona) for i in on.items]
            if mode == "interests":  # the attention winner costs nothing: always named
                assert [i.because for i in off.items] == [i.because for i in on.items]
            else:
                assert all(i.because is None for i in off.items)


def test_a_server_host_caches_recent_vectors_under_the_profile_ttl(demo_dataset,  # type: ignore[no-untyped-def]
                                                                   tiny_encoder) -> None:
    """With a profile TTL a host answers a returning user without reading the user state:
    the profile and its recent vectors both come from its cache (the same staleness bound);
    a change this host writes drops both."""
    from typing import Any

    from qdrant_client import QdrantClient

    from p4r.store.server import ServerBackend

    class Recorded:
        def __init__(self, client: QdrantClient) -> None:
            self.client, self.reads = client, []  # type: ignore[var-annotated]

        def __getattr__(self, name: str) -> Any:
            attr = getattr(self.client, name)
            if name not in ("retrieve", "query_batch_points"):
                return attr

            def recorded(*args: Any, **kwargs: Any) -> Any:
                self.reads.append((name, kwargs.get("collection_name")))
                return attr(*args, **kwargs)
            return recorded

    client = Recorded(QdrantClient(":memory:"))
    backend = ServerBackend(client, url=":memory:")  # type: ignore[arg-type]
    upsert(demo_dataset, backend, tiny_encoder)
    reranker = Reranker("demo", backend, QuerySettings(profile_cache_size=100, profile_ttl=600))
    first = reranker.rerank(user_id="u-ana", candidates=CANDS)
    client.reads.clear()
    assert reranker.rerank(user_id="u-ana", candidates=CANDS) == first
    assert not [r for r in client.reads if "_u" in str(r[1])], client.reads
    reranker.add_interactions([{"user_id": "u-ana", "item_id": "tide-sushi",
                                "timestamp": 1.75e9, "text": "fresh fish"}])
    client.reads.clear()
    after = reranker.rerank(user_id="u-ana", candidates=CANDS)
    assert {name for name, where in client.reads if "_u" in str(where)} == {"retrieve"}
    assert after.items != first.items
