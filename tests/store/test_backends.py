"""The same calls against every backend: Edge in-process, qdrant-client (":memory:"), and a real
server when QDRANT_URL is set. Results are compared with numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest

from p4r.errors import NotFoundError
from p4r.store.base import Backend, CollectionSpec, top_groups_bound
from p4r.store.naming import point_id
from tests.conftest import brute_force_scores


def _fill(backend: Backend, n_items: int = 30, per_item: int = 4, dim: int = 16,  # type: ignore[no-untyped-def]
          create: bool = True):
    rng = np.random.default_rng(7)
    if create:
        backend.create_collection(CollectionSpec(name="p4r_t_personas_v1", dim=dim,
                                                 metadata={"note": "x"}))
    ids, vectors, payloads = [], [], []
    for item in range(n_items):
        for p in range(per_item):
            ids.append(point_id("t", f"i{item:02d}", f"P{p}"))
            vectors.append(rng.normal(size=dim))
            payloads.append({"item_id": f"i{item:02d}", "persona_id": f"P{p}"})
    vectors = np.asarray(vectors, dtype=np.float32)
    backend.upsert("p4r_t_personas_v1", ids, vectors, payloads)
    return ids, vectors, payloads


def test_create_upsert_count_and_metadata(backend: Backend) -> None:
    ids, _, _ = _fill(backend)
    name = "p4r_t_personas_v1"
    assert backend.collection_exists(name)
    assert name in backend.list_collections()
    assert backend.count(name) == 120
    assert backend.count_distinct(name, "item_id") == 30
    assert backend.vector_size(name) == 16
    meta = backend.get_metadata(name)
    assert meta["note"] == "x" and meta["dim"] == 16
    backend.update_metadata(name, {"state": "complete"})
    assert backend.get_metadata(name)["state"] == "complete"
    assert backend.get_metadata(name)["note"] == "x", "metadata updates merge"
    assert backend.existing_ids(name, [ids[0], point_id("nope")]) == {ids[0]}


def test_upsert_is_idempotent(backend: Backend) -> None:
    ids, vectors, payloads = _fill(backend)
    backend.upsert("p4r_t_personas_v1", ids, vectors, payloads)
    assert backend.count("p4r_t_personas_v1") == len(ids)


def test_scroll_filter_and_retrieve(backend: Backend) -> None:
    ids, vectors, _ = _fill(backend)
    name = "p4r_t_personas_v1"
    assert len(list(backend.scroll(name))) == 120
    rows = list(backend.scroll(name, match=("item_id", "i03"), with_vectors=True))
    assert sorted(r.payload["persona_id"] for r in rows) == ["P0", "P1", "P2", "P3"]
    got = backend.retrieve(name, [ids[5]], with_vectors=True)
    expected = vectors[5] / np.linalg.norm(vectors[5])
    np.testing.assert_allclose(got[0].vector, expected, atol=1e-6)


def test_best_per_group_is_exact(backend: Backend) -> None:
    _, vectors, payloads = _fill(backend)
    rng = np.random.default_rng(3)
    queries = rng.normal(size=(4, 16)).astype(np.float32)
    groups = [["i01", "i05", "i09", "i22", "missing"], ["i00"], [], ["i10", "i11", "i12"]]
    answers = backend.best_per_group("p4r_t_personas_v1", queries, groups)
    assert len(answers) == 4
    for query, wanted, (hits, present) in zip(queries, groups, answers, strict=True):
        by_item = {g: vectors[[i for i, p in enumerate(payloads) if p["item_id"] == g]]
                   for g in wanted if g != "missing"}
        expected = brute_force_scores(query, by_item)
        assert [h.group for h in hits] == sorted(expected, key=lambda g: (-expected[g], g))
        for hit in hits:
            assert hit.score == pytest.approx(expected[hit.group], abs=1e-5)
        assert present == set(expected), "every requested group that has points"


def test_equal_scores_are_ordered_by_group(backend: Backend) -> None:
    """Items whose best personas tie come back by item id, whatever order the engine used."""
    backend.create_collection(CollectionSpec(name="p4r_t_personas_v1", dim=4))
    same = np.array([1.0, 0.5, 0.0, 0.0], dtype=np.float32)
    groups = ["i9", "i3", "i5", "i1"]
    backend.upsert("p4r_t_personas_v1", [point_id("t", g, "P0") for g in groups],
                   np.stack([same] * len(groups)), [{"item_id": g} for g in groups])
    hits = backend.best_per_group("p4r_t_personas_v1", same[None, :], [groups])[0].hits
    assert [h.group for h in hits] == sorted(groups)


def test_top_groups_bound_holds_for_any_score_order() -> None:
    """In any score order of any group sizes, the k best groups' first points lie within the
    bound (and the bound is tight: a worst case needs every point of it)."""
    rng = np.random.default_rng(11)
    for _ in range(2000):
        sizes = rng.integers(1, 8, size=int(rng.integers(1, 12))).tolist()
        k = int(rng.integers(1, len(sizes) + 1))
        order = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
        firsts = sorted(int(np.argmax(order == g)) for g in range(len(sizes)))
        assert firsts[k - 1] < top_groups_bound(sizes, k)
    assert top_groups_bound([7, 2, 5, 3], 3) == 7 + 5 + 1
    assert top_groups_bound([5, 5], 2) == 6 and top_groups_bound([5, 5], 3) == 10
    assert top_groups_bound([0, 4], 1) == 1


def test_top_k_is_the_head_of_the_full_answer(backend: Backend) -> None:
    """limits=k gives exactly the first k groups of the unlimited answer, also when one big
    group fills the top of the ranking (the bounded engine limit must still reach group k)."""
    dim = 8
    query = np.zeros(dim, dtype=np.float32)
    query[0] = 1.0
    backend.create_collection(CollectionSpec(name="p4r_t_personas_v1", dim=dim,
                                             metadata={"max_group_size": 9}))
    rng = np.random.default_rng(5)
    ids, vectors, payloads = [], [], []
    sizes = {"big": 9, **{f"g{i}": int(rng.integers(1, 5)) for i in range(12)}}
    for group, size in sizes.items():
        for p in range(size):
            v = rng.normal(size=dim) * (0.05 if group == "big" else 1.0)
            if group == "big":
                v[0] = 1.0  # every point of "big" outranks every other point
            ids.append(point_id("t", group, f"P{p}"))
            vectors.append(v)
            payloads.append({"item_id": group, "persona_id": f"P{p}"})
    backend.upsert("p4r_t_personas_v1", ids, np.asarray(vectors, dtype=np.float32), payloads)
    wanted = sorted(sizes)
    full = backend.best_per_group("p4r_t_personas_v1", query[None, :], [wanted])[0].hits
    assert full[0].group == "big" and len(full) == len(sizes)
    for k in (1, 2, 3, 5, len(sizes) - 1):
        top = backend.best_per_group("p4r_t_personas_v1", query[None, :], [wanted],
                                     limits=[k])[0]
        assert top.hits == full[:k], k
        assert top.present == set(sizes), "a bounded answer still knows every present group"


def test_aliases_switch_atomically(backend: Backend) -> None:
    _fill(backend)
    backend.create_collection(CollectionSpec(name="p4r_t_personas_v2", dim=16))
    backend.set_aliases({"p4r_t_personas": "p4r_t_personas_v1"})
    assert backend.get_aliases()["p4r_t_personas"] == "p4r_t_personas_v1"
    backend.set_aliases({"p4r_t_personas": "p4r_t_personas_v2"})
    assert backend.get_aliases()["p4r_t_personas"] == "p4r_t_personas_v2"
    backend.set_aliases({"p4r_t_personas": None})
    assert "p4r_t_personas" not in backend.get_aliases()
    with pytest.raises(NotFoundError):
        backend.set_aliases({"p4r_t_personas": "p4r_t_personas_v9"})


def test_drop_collection(backend: Backend) -> None:
    _fill(backend)
    backend.drop_collection("p4r_t_personas_v1")
    assert not backend.collection_exists("p4r_t_personas_v1")
    with pytest.raises(NotFoundError):
        backend.get_metadata("p4r_t_personas_v1")


def test_payload_index_exists_before_points(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from p4r.store.edge import EdgeBackend

    backend = EdgeBackend(tmp_path / "edge")
    backend.create_collection(CollectionSpec(name="c", dim=4, keyword_indexes=("item_id",
                                                                               "user_id")))
    schema = backend._shard("c").info().payload_schema
    assert set(schema) == {"item_id", "user_id"}
    assert backend.count("c") == 0
    backend.close()


def test_group_keys_are_tenant_indexes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A collection grouped by item keeps each item's points side by side (a tenant index);
    other keyword indexes stay plain. A query's answer does not change with the layout."""
    from p4r.store.edge import EdgeBackend

    backend = EdgeBackend(tmp_path / "edge")
    spec = CollectionSpec(name="p4r_t_personas_v1", dim=16, group_by=("item_id",),
                          keyword_indexes=("item_id", "persona_id"))
    assert spec.tenant("item_id") and not spec.tenant("persona_id")
    backend.create_collection(spec)
    _, vectors, payloads = _fill(backend, create=False)
    backend.seal("p4r_t_personas_v1")
    schema = backend._shard("p4r_t_personas_v1").info().payload_schema
    assert schema["item_id"].params.is_tenant is True
    assert getattr(schema["persona_id"].params, "is_tenant", None) in (None, False)
    query = np.random.default_rng(3).normal(size=(1, 16)).astype(np.float32)
    groups = ["i03", "i07", "i11", "i19"]
    hits = backend.best_per_group("p4r_t_personas_v1", query, [groups])[0].hits
    by_item = {g: vectors[[i for i, p in enumerate(payloads) if p["item_id"] == g]]
               for g in groups}
    expected = brute_force_scores(query[0], by_item)
    assert [h.group for h in hits] == sorted(expected, key=lambda g: (-expected[g], g))
    backend.close()


def test_edge_reopens_from_disk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from p4r.store.edge import EdgeBackend

    first = EdgeBackend(tmp_path / "edge")
    _fill(first)
    first.set_aliases({"p4r_t_personas": "p4r_t_personas_v1"})
    first.close()
    second = EdgeBackend(tmp_path / "edge")
    assert second.count("p4r_t_personas_v1") == 120
    assert second.get_aliases() == {"p4r_t_personas": "p4r_t_personas_v1"}
    second.close()


@pytest.mark.parametrize("resumed", [False, True], ids=["one-process", "resumed"])
def test_sealed_edge_collection_serves_without_a_payload_scan(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch: pytest.MonkeyPatch, resumed: bool
) -> None:
    """Sealing writes the point groups (from the upserts seen, or one scan when another
    process wrote part of the collection); a reader then never scans payloads."""
    from p4r.store.edge import EdgeBackend

    writer = EdgeBackend(tmp_path / "edge")
    writer.create_collection(CollectionSpec(name="p4r_t_personas_v1", dim=16,
                                            metadata={"state": "building"},
                                            group_by=("item_id",)))
    if resumed:
        writer.close()  # the build goes on in another process: its upserts are not all seen
        writer = EdgeBackend(tmp_path / "edge")
    _fill(writer, create=False)
    with monkeypatch.context() as patch:
        if not resumed:  # every point was seen: no scan at sealing either
            patch.setattr(EdgeBackend, "scroll", lambda *a, **k: pytest.fail("payload scan"))
        writer.seal("p4r_t_personas_v1")
    writer.update_metadata("p4r_t_personas_v1", {"state": "complete"})
    assert writer.check_collection("p4r_t_personas_v1") == []
    query = np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)
    groups = [["i01", "i05", "i09", "i22"]]
    expected = writer.best_per_group("p4r_t_personas_v1", query, groups)
    writer.close()

    reader = EdgeBackend(tmp_path / "edge")
    monkeypatch.setattr(EdgeBackend, "scroll", lambda *a, **k: pytest.fail("payload scan"))
    assert reader.best_per_group("p4r_t_personas_v1", query, groups) == expected
    assert reader.groups_present("p4r_t_personas_v1", ["i01", "nope"]) == {"i01"}
    reader.close()


def test_unreachable_server_names_the_url() -> None:
    from p4r.errors import BackendError
    from p4r.settings import QdrantSettings
    from p4r.store.server import connect

    with pytest.raises(BackendError, match=r"cannot reach Qdrant at http://127\.0\.0\.1:9"):
        connect(QdrantSettings(url="http://127.0.0.1:9", timeout=2))


def test_warm_up_groups_are_spread_over_the_store(backend: Backend) -> None:
    """Edge warms a bound version over groups from all over the store, as real requests rank
    them (the first groups only left a reload's first request slower); a server: none."""
    from p4r.store.edge import EdgeBackend

    _fill(backend)
    name = "p4r_t_personas_v1"
    groups = backend.warm_up_groups(name, 10)
    if not isinstance(backend, EdgeBackend):
        assert groups == []
        return
    every = list(backend.group_sizes(name))
    assert len(groups) == len(set(groups)) == 10 and set(groups) <= set(every)
    assert every.index(groups[-1]) >= len(every) - 3  # reaches the end of the map
    assert sorted(backend.warm_up_groups(name, 100)) == sorted(every)  # fewer: all of them
