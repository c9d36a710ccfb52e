"""Reranker behaviour on every backend; exactness against numpy on the real Yelp sample."""

from __future__ import annotations

import copy
import random
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest

from p4r.datasets import load_dataset
from p4r.datasets.models import Dataset
from p4r.encoder.cache import encode_cached
from p4r.errors import ConfigError, NotFoundError
from p4r.indexer import plan_points
from p4r.query import Reranker, RerankRequest, UnknownCandidatesError
from p4r.settings import EncoderSettings, QuerySettings
from p4r.store.base import Backend
from p4r.store.edge import EdgeBackend
from tests.conftest import YELP, require_shared, upsert


@pytest.fixture
def demo_index(backend: Backend, demo_dataset, tiny_encoder, tiny_models):  # type: ignore[no-untyped-def]
    upsert(demo_dataset, backend, tiny_encoder)
    return Reranker("demo", backend, encoder=EncoderSettings(model=str(tiny_models["a"])))


def test_result_shape_and_explanations(demo_index: Reranker) -> None:
    cands = ["tide-sushi", "polar-scoop-gelato", "cafe-lumen", "nope"]
    result = demo_index.rerank(user_id="u-ben", candidates=cands, on_unknown="keep")
    assert [r.item_id for r in result.items][-1] == "nope"
    kinds = {r.item_id: r.explanation for r in result.items}
    assert kinds == {"tide-sushi": "persona", "cafe-lumen": "persona",
                     "polar-scoop-gelato": "summary", "nope": "unscored"}
    assert result.unknown == ["nope"]
    scores = [r.score for r in result.items if r.score is not None]
    assert scores == sorted(scores, reverse=True)
    sushi = next(r for r in result.items if r.item_id == "tide-sushi")
    assert sushi.persona is not None and sushi.persona.persona_id in {"P1", "P2"}
    assert sushi.persona.name and sushi.persona.rationale
    as_json = sushi.as_dict()
    assert set(as_json) == {"item_id", "score", "explanation", "persona", "because"}
    assert set(as_json["persona"]) == {"persona_id", "name", "description", "rationale"}
    assert set(as_json["because"]) == {"item_id", "timestamp", "weight"}
    assert next(r for r in result.items if r.item_id == "nope").as_dict()["because"] is None


def test_unknown_candidates_raise_by_default(demo_index: Reranker) -> None:
    pattern = r"1 candidate.*unknown to dataset 'demo': ghost"
    with pytest.raises(UnknownCandidatesError, match=pattern) as info:
        demo_index.rerank(user_id="u-ben", candidates=["cafe-lumen", "ghost"])
    assert info.value.unknown == ["ghost"]


def test_k_truncates_and_duplicates_collapse(demo_index: Reranker) -> None:
    cands = ["cafe-lumen", "tide-sushi", "cafe-lumen", "saffron-lane", "[PAD]"]
    full = demo_index.rerank(user_id="u-dev", candidates=cands)
    assert len(full.items) == 3
    top = demo_index.rerank(user_id="u-dev", candidates=cands, k=2)
    assert top.items == full.items[:2]


def test_unknown_user_is_reported(demo_index: Reranker) -> None:
    with pytest.raises(NotFoundError, match="user 'nobody' has no interactions"):
        demo_index.rerank(user_id="nobody", candidates=["cafe-lumen"])


def test_batch_equals_single_calls(demo_index: Reranker) -> None:
    requests = [RerankRequest(candidates=["cafe-lumen", "tide-sushi", "taqueria-sol"], user_id=u)
                for u in ("u-ana", "u-ben", "u-chloe", "u-dev")]
    batch = demo_index.rerank_batch(requests)
    singles = [demo_index.rerank(user_id=r.user_id, candidates=r.candidates) for r in requests]
    for b, s in zip(batch, singles, strict=True):
        assert [i.item_id for i in b.items] == [i.item_id for i in s.items]
        assert [i.score for i in b.items] == pytest.approx([i.score for i in s.items], abs=1e-6)


def test_history_on_the_fly_matches_indexed_user(demo_index: Reranker, demo_dataset) -> None:  # type: ignore[no-untyped-def]
    history = [{"item_id": i.item_id, "timestamp": i.timestamp, "aspects": i.aspects,
                "text": i.text} for i in demo_dataset.interactions if i.user_id == "u-chloe"]
    cands = ["cafe-lumen", "green-fern-bistro", "ironwood-steakhouse", "polar-scoop-gelato"]
    indexed = demo_index.rerank(user_id="u-chloe", candidates=cands)
    fresh = demo_index.rerank(history=list(reversed(history)), candidates=cands)
    assert [i.item_id for i in fresh.items] == [i.item_id for i in indexed.items]
    assert [i.score for i in fresh.items] == pytest.approx([i.score for i in indexed.items],
                                                           abs=1e-5)


def test_history_requests_find_the_index_encoder(backend: Backend, demo_dataset, tiny_models,  # type: ignore[no-untyped-def]
                                                 tmp_path) -> None:
    import shutil

    from p4r.encoder.model import Encoder

    built_with = shutil.copytree(tiny_models["a"], tmp_path / "encoder-a")
    upsert(demo_dataset, backend, Encoder(EncoderSettings(model=str(built_with))))
    history = [{"item_id": "cafe-lumen", "text": "good", "timestamp": 1}]
    reranker = Reranker("demo", backend, encoder=EncoderSettings(model=str(tiny_models["b"])))
    # A request that encodes nothing never needs the encoder...
    assert reranker.rerank(user_id="u-ben", candidates=["cafe-lumen"]).items
    # ...and one that embeds text uses the folder the index recorded, not the configured one.
    found = reranker.rerank(history=history, candidates=["cafe-lumen", "tide-sushi"])
    right = Reranker("demo", backend, encoder=EncoderSettings(model=str(tiny_models["a"])))
    assert found == right.rerank(history=history, candidates=["cafe-lumen", "tide-sushi"])
    # When that folder is gone and the configured encoder differs, the error says what to set.
    shutil.rmtree(built_with)
    lost = Reranker("demo", backend, encoder=EncoderSettings(model=str(tiny_models["b"])))
    with pytest.raises(ConfigError, match=f"set P4R_ENCODER__MODEL={built_with}"):
        lost.rerank(history=history, candidates=["cafe-lumen"])


def test_unindexed_dataset(backend: Backend) -> None:
    with pytest.raises(NotFoundError, match="p4r index upsert --dataset ghost"):
        Reranker("ghost", backend)


# -- real data ---------------------------------------------------------------------------------
N_USERS = 12


@pytest.fixture(scope="module")
def _yelp_subset() -> Dataset:
    data = load_dataset("yelp", require_shared(YELP))
    users = sorted(data.users)[:N_USERS]
    data.interactions = [i for i in data.interactions if i.user_id in users]
    keep = set(data.personas) | {i.item_id for i in data.interactions}
    data.items = {k: v for k, v in data.items.items() if k in keep}
    return data


@pytest.fixture
def yelp_subset(_yelp_subset: Dataset) -> Dataset:
    return copy.deepcopy(_yelp_subset)


@pytest.fixture(params=["tiny", pytest.param("minilm", marks=pytest.mark.slow)])
def real_data_encoder(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """The tiny 32-d test encoder (fast tier), and the real default MiniLM (slow tier: it
    encodes the real text once per session; the other cases read the embedding cache)."""
    return request.getfixturevalue("tiny_encoder" if request.param == "tiny" else "minilm")


@pytest.mark.parametrize("maxsim", [False, True], ids=["bounded", "maxsim"])
def test_scores_equal_brute_force_on_real_data(
    backend: Backend, yelp_subset: Dataset, real_data_encoder, embedding_cache,  # type: ignore[no-untyped-def]
    maxsim: bool,
) -> None:
    """Every score is max over the item's persona vectors of the cosine with the decayed user
    vector (to 1e-5) and the order matches, for real personas and histories; a top 5 of 20
    (bounded persona query, or the MaxSim collection when built) is the full answer's head."""
    encoder = real_data_encoder
    upsert(yelp_subset, backend, encoder, cache=embedding_cache, maxsim=maxsim)
    query = QuerySettings()
    reranker = Reranker("yelp", backend, query=query)

    plan = plan_points(yelp_subset)
    fp = encoder.fingerprint

    def vectors(points):  # type: ignore[no-untyped-def]
        return encode_cached([p.text for p in points], fp, encoder.encode, embedding_cache)

    persona_vecs = vectors(plan["personas"])
    summary_vecs = vectors(plan["summaries"])
    by_item: dict[str, list[np.ndarray]] = {}
    for point, vec in zip(plan["personas"], persona_vecs, strict=True):
        by_item.setdefault(point.payload["item_id"], []).append(vec)
    summary_of = {p.payload["item_id"]: v for p, v in zip(plan["summaries"], summary_vecs,
                                                          strict=True)}
    rng = random.Random(0)
    persona_items = sorted(by_item)
    plain_items = sorted(set(summary_of) - set(by_item))
    requests = []
    for user in sorted(yelp_subset.users):
        cands = rng.sample(persona_items, 15) + rng.sample(plain_items, 5)
        rng.shuffle(cands)
        requests.append(RerankRequest(candidates=cands, user_id=user))

    # qdrant-client's local mode re-normalises its stored vectors in place on every cosine
    # search, so the first search after an upsert can score 1e-7 off the later ones (the tiny
    # encoder's vectors show it): one query first, then both answers below read the same.
    reranker.rerank_batch(requests)
    results = reranker.rerank_batch(requests)
    # k = 5 of 20: a bounded persona query, or the per-item MaxSim collection when it was
    # built. The same top 5, scores and personas.
    tops = reranker.rerank_batch([replace(r, k=5) for r in requests])
    for full, top in zip(results, tops, strict=True):
        assert top.items == full.items[:5]
    for request, result in zip(requests, results, strict=True):
        history = [(p.payload["ts"], p.payload["item_id"], v)
                   for p, v in zip(plan["interactions"], vectors(plan["interactions"]),
                                   strict=True) if p.payload["user_id"] == request.user_id]
        history.sort(key=lambda row: (row[0], row[1]))
        emb = np.stack([row[2] for row in history])[-query.last_n:].astype(np.float64)
        w = query.gamma ** np.arange(len(emb) - 1, -1, -1)
        user = (w @ emb) / w.sum()
        user /= np.linalg.norm(user)
        expected = {}
        for item in request.candidates:
            if item in by_item:
                expected[item] = float(np.max(np.stack(by_item[item]) @ user))
            else:
                expected[item] = float(summary_of[item] @ user)
        got = {r.item_id: r.score for r in result.items}
        assert set(got) == set(expected)
        for item, score in expected.items():
            assert got[item] == pytest.approx(score, abs=1e-5), item
        order = sorted(expected, key=lambda i: (-expected[i], i))
        assert [r.item_id for r in result.items] == order
        for r in result.items:
            assert r.explanation == ("persona" if r.item_id in by_item else "summary")
            if r.persona is not None:
                best = int(np.argmax(np.stack(by_item[r.item_id]) @ user))
                winner = [p for p in plan["personas"] if p.payload["item_id"] == r.item_id][best]
                assert r.persona.persona_id == winner.payload["persona_id"]


@pytest.mark.parametrize("maxsim", [False, True], ids=["bounded", "maxsim"])
def test_edge_and_server_backends_agree(tmp_path, demo_dataset, tiny_encoder, maxsim) -> None:  # type: ignore[no-untyped-def]
    """Congruence: the same Reranker calls on Edge and on the server backend (batched
    query_batch_points) give the same items, order, scores and personas, top k included."""
    from tests.conftest import open_test_backend

    stores = [open_test_backend(kind, tmp_path) for kind in ("edge", "server-memory")]
    rerankers = []
    for store in stores:
        upsert(demo_dataset, store, tiny_encoder, maxsim=maxsim)
        rerankers.append(Reranker("demo", store))
    cands = [*sorted(demo_dataset.personas), "polar-scoop-gelato"]
    requests = [RerankRequest(candidates=cands, user_id=u, k=k)
                for u in ("u-ana", "u-ben", "u-chloe", "u-dev") for k in (None, 3)]
    edge, server = (r.rerank_batch(requests) for r in rerankers)
    singles = [rerankers[1].rerank(candidates=r.candidates, user_id=r.user_id, k=r.k)
               for r in requests]
    for a, b, c in zip(edge, server, singles, strict=True):
        assert [i.item_id for i in a.items] == [i.item_id for i in b.items] == \
            [i.item_id for i in c.items]
        assert [i.persona for i in a.items] == [i.persona for i in b.items]
        assert [i.explanation for i in a.items] == [i.explanation for i in b.items]
        assert np.allclose([i.score for i in a.items], [i.score for i in b.items], atol=1e-5)
    for store in stores:
        store.close()


def test_float16_storage_is_another_version_with_scores_within_1e3(  # type: ignore[no-untyped-def]
    backend: Backend, demo_dataset, tiny_encoder
) -> None:
    """Vectors stored as float16 (opt-in) answer with the float32 version's scores to 1e-3,
    in an order that only swaps items whose exact scores are that close; switching the
    storage builds a new version instead of calling the old one unchanged."""
    upsert(demo_dataset, backend, tiny_encoder)
    cands = [*sorted(demo_dataset.personas), "polar-scoop-gelato"]
    users = ("u-ana", "u-ben", "u-chloe", "u-dev")
    exact = {u: Reranker("demo", backend).rerank(user_id=u, candidates=cands)
             for u in users}
    report = upsert(demo_dataset, backend, tiny_encoder, vector_datatype="float16")
    assert report.action == "created" and report.version == 2
    half = Reranker("demo", backend)
    assert backend.get_metadata(half.personas)["vector_datatype"] == "float16"
    for user in users:
        want = {i.item_id: i.score for i in exact[user].items}
        got = half.rerank(user_id=user, candidates=cands).items
        assert {i.item_id for i in got} == set(want)
        for item in got:
            assert item.score == pytest.approx(want[item.item_id], abs=1e-3)
        for a, b in pairwise(got):
            assert want[a.item_id] >= want[b.item_id] - 2e-3, (user, a.item_id, b.item_id)
    again = upsert(demo_dataset, backend, tiny_encoder, vector_datatype="float16")
    assert again.action == "unchanged" and again.version == 2


def test_a_version_is_warmed_before_it_serves(backend: Backend, demo_dataset, tiny_encoder,  # type: ignore[no-untyped-def]
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Binding answers a few vector requests on the new version (Edge: over groups it already
    holds; a server: none), reading only; a failure there is left to the real requests."""
    from p4r.errors import DamagedStoreError
    from p4r.query import reranker as module

    upsert(demo_dataset, backend, tiny_encoder)
    asked: list[tuple[str, int]] = []
    original = type(backend).best_per_group

    def spy(self, name, vectors, groups, *args, **kwargs):  # type: ignore[no-untyped-def]
        asked.append((name, sum(len(values) for values in groups)))  # candidates asked
        return original(self, name, vectors, groups, *args, **kwargs)

    monkeypatch.setattr(type(backend), "best_per_group", spy)
    monkeypatch.setattr(module, "WARM_UP_REQUESTS", 0)
    cold = Reranker("demo", backend)  # opens the shards (Edge rehearses its engine calls)
    expected = cold.rerank(user_id="u-ana", candidates=["cafe-lumen", "tide-sushi"])
    asked.clear()
    monkeypatch.setattr(module, "WARM_UP_REQUESTS", 3)
    reranker = Reranker("demo", backend)
    warmed = [size for name, size in asked if name == reranker.personas]
    if isinstance(backend, EdgeBackend):
        assert len(warmed) == 3 and all(size > 0 for size in warmed)
    else:
        assert warmed == []
    asked.clear()
    monkeypatch.setattr(module, "WARM_UP_REQUESTS", 50)  # more than the demo's items
    Reranker("demo", backend)
    warmed = [size for name, size in asked if name == reranker.personas]
    if isinstance(backend, EdgeBackend):  # one request per item at most, none empty
        groups = len(backend.group_sizes(reranker.personas))
        assert len(warmed) == groups and all(size == 1 for size in warmed)
    assert reranker.rerank(user_id="u-ana", candidates=[
        "cafe-lumen", "tide-sushi"]) == expected  # answers do not depend on the warm-up

    def broken(*_: object, **__: object) -> None:
        raise DamagedStoreError("a damaged table")

    monkeypatch.setattr(type(backend), "best_per_group", broken)
    reranker = Reranker("demo", backend)  # binds: the warm-up's failure is not the bind's
    with pytest.raises(DamagedStoreError):
        reranker.rerank(user_id="u-ana", candidates=["cafe-lumen"])
