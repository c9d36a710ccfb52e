"""Vector tables ("because" without engine reads) answer exactly what the engine would, are
written only for the kinds "because" compares, and a damaged one is reported by ``check``
and never served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from p4r.errors import DamagedStoreError
from p4r.query import Reranker
from p4r.store.base import CollectionSpec
from p4r.store.edge import EdgeBackend
from p4r.store.edge_vectors import VectorTable, vectors_file, write_vector_table
from p4r.store.lifecycle import check_dataset
from p4r.store.naming import point_id
from tests.conftest import upsert
from tests.store.test_edge_fast_paths import TABLE_DAMAGE

NAME = "p4r_t_personas_v1"


def _sealed(tmp_path: Path, n: int = 300, *, kind: str = "personas", dim: int = 8,
            datatype: str = "float32") -> tuple[EdgeBackend, list[int]]:
    store = EdgeBackend(tmp_path / "edge")
    store.create_collection(CollectionSpec(name=NAME, dim=dim, group_by=("item_id",),
                                           datatype=datatype,  # type: ignore[arg-type]
                                           metadata={"kind": kind}))
    ids = [point_id("t", str(i)) for i in range(n)]
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    # Three upserts: the engine's id order, not the upsert order, is the table's.
    for part in (slice(200, None), slice(0, 100), slice(100, 200)):
        store.upsert(NAME, ids[part], vectors[part], [{"item_id": f"i{i % 50}"}
                                                     for i in range(n)][part])
    store.seal(NAME)
    return store, ids


def _engine_vectors(store: EdgeBackend, ids: list[int]) -> dict[int, np.ndarray]:
    return {r.id: np.asarray(r.vector, dtype=np.float32)
            for r in store._shard(NAME).retrieve(ids, False, True)}


@pytest.mark.parametrize("datatype", ["float32", "float16"])
def test_table_vectors_equal_the_engine_vectors(tmp_path: Path, datatype: str) -> None:
    store, ids = _sealed(tmp_path, datatype=datatype)
    assert store.get_metadata(NAME)["vector_table"]["count"] == len(ids)
    expected = _engine_vectors(store, ids)
    asked = [*ids[::7], point_id("absent"), 12345]
    for got in (store.retrieve_vectors(NAME, asked),
                {r.id: r.vector for r in store.retrieve(NAME, asked, with_vectors=True,
                                                        with_payload=False)}):
        assert sorted(got) == sorted(ids[::7]), "ids the collection lacks are absent"
        for pid, vector in got.items():
            np.testing.assert_array_equal(vector, expected[pid])  # bit for bit
    assert store.retrieve_vectors(NAME, ["not-an-id"]) == {}
    store.close()

    reader = EdgeBackend(tmp_path / "edge")  # another process: reads the file, not the engine
    shard = reader._shard(NAME)

    class NoVectorReads:
        def retrieve(self, ids: list, with_payload: bool, with_vectors: bool) -> list:
            assert not with_vectors, "vectors read from the engine"
            return shard.retrieve(ids, with_payload, with_vectors)

        def __getattr__(self, name: str) -> object:
            return getattr(shard, name)

    reader._shards[NAME] = NoVectorReads()  # type: ignore[assignment]
    got = reader.retrieve_vectors(NAME, ids)
    assert all(np.array_equal(got[pid], expected[pid]) for pid in ids)
    assert reader.retrieve(NAME, ids[:3])[0].payload, "payload reads still reach the engine"
    reader.close()


def test_only_kinds_because_compares_get_a_table(tmp_path: Path) -> None:
    store, ids = _sealed(tmp_path, 20, kind="interactions")
    assert "vector_table" not in store.get_metadata(NAME)
    assert not vectors_file(store.root / NAME).exists()
    got = store.retrieve_vectors(NAME, ids)
    assert all(np.array_equal(got[pid], v) for pid, v in _engine_vectors(store, ids).items())
    store.close()


def test_writing_refuses_ids_out_of_order_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "vectors.bin"
    rows = np.ones((2, 4), dtype=np.float32)
    for pages in ([([5, 3], rows)], [([1, 2], rows), ([2, 9], rows)], [(["a-uuid", 2], rows)]):
        with pytest.raises(ValueError):
            write_vector_table(path, 4, pages)
        assert not path.exists() and not list(tmp_path.iterdir())
    record = write_vector_table(path, 4, [([1, 2], rows), ([], np.zeros((0, 4))),
                                          ([7], rows[:1] * 2)])
    table = VectorTable(path, "fix it", record)
    assert table.count == 3 and sorted(table.get_many([7, 1, 4])) == [1, 7]
    np.testing.assert_array_equal(table.get_many([7])[7], [2, 2, 2, 2])
    table.close()


def test_a_version_sealed_before_vector_tables_reads_the_engine(tmp_path: Path) -> None:
    store, ids = _sealed(tmp_path, 20)
    store.close()
    meta_path = tmp_path / "edge" / NAME / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["vector_table"]
    meta_path.write_text(json.dumps(meta))
    vectors_file(tmp_path / "edge" / NAME).unlink()
    reader = EdgeBackend(tmp_path / "edge")
    assert reader.check_collection(NAME) == []
    got = reader.retrieve_vectors(NAME, ids)
    assert all(np.array_equal(got[pid], v) for pid, v in _engine_vectors(reader, ids).items())
    reader.close()


@pytest.mark.parametrize("damage", sorted(TABLE_DAMAGE))
def test_a_damaged_vector_table_is_reported_and_never_served(tmp_path: Path,
                                                             damage: str) -> None:
    store, ids = _sealed(tmp_path, 40)
    store.close()
    path = vectors_file(tmp_path / "edge" / NAME)
    TABLE_DAMAGE[damage](path)
    reader = EdgeBackend(tmp_path / "edge")
    problems = reader.check_collection(NAME)
    assert len(problems) == 1 and str(path) in problems[0], problems
    for _ in range(2):  # asked again: still refused, never half-served
        with pytest.raises(DamagedStoreError, match="vector table"):
            reader.retrieve_vectors(NAME, ids)
    reader.close()


def test_a_vector_table_from_another_sealing_is_refused(tmp_path: Path) -> None:
    store, ids = _sealed(tmp_path, 40)
    store.close()
    path = vectors_file(tmp_path / "edge" / NAME)
    write_vector_table(path, 8, [([ids[0]], np.zeros((1, 8)))])
    reader = EdgeBackend(tmp_path / "edge")
    assert any("recorded" in p for p in reader.check_collection(NAME))
    with pytest.raises(DamagedStoreError):
        reader.retrieve_vectors(NAME, ids)
    reader.close()


def test_because_is_unchanged_by_the_table_and_a_damaged_one_stops_it(
        tmp_path: Path, demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    store = EdgeBackend(tmp_path / "edge")
    upsert(demo_dataset, store, tiny_encoder)
    candidates = ["cafe-lumen", "tide-sushi", "noodle-harbor", "taqueria-sol"]
    with_table = Reranker("demo", store).rerank(user_id="u-ana", candidates=candidates)
    assert any(item.because is not None for item in with_table.items)
    store.close()
    for kind in ("personas", "summaries"):
        folder = tmp_path / "edge" / f"p4r_demo_{kind}_v1"
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["vector_table"]["count"] > 0
        (folder / "meta.json").with_suffix(".bak").write_text(json.dumps(meta))
        del meta["vector_table"]
        (folder / "meta.json").write_text(json.dumps(meta))
    store = EdgeBackend(tmp_path / "edge")
    engine = Reranker("demo", store).rerank(user_id="u-ana", candidates=candidates)
    assert engine.items == with_table.items  # scores, personas and because alike
    store.close()
    folder = tmp_path / "edge" / "p4r_demo_personas_v1"
    (folder / "meta.json").write_text((folder / "meta.bak").read_text())
    TABLE_DAMAGE["one byte changed"](vectors_file(folder))
    store = EdgeBackend(tmp_path / "edge")
    report = check_dataset(store, "demo")
    assert not report["ok"] and any("vector table" in p for p in report["problems"])
    with pytest.raises(DamagedStoreError):
        Reranker("demo", store).rerank(user_id="u-ana", candidates=candidates)
    store.close()
