"""Edge's fast paths answer exactly what the engine would: payload tables (explanations by
mmap), cached query plans, and the warm-up when a sealed collection opens; and a damaged
payload table is reported by ``check`` and never served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from p4r.errors import DamagedStoreError
from p4r.query import Reranker
from p4r.store.base import CollectionSpec
from p4r.store.edge import EdgeBackend
from p4r.store.edge_groups import GroupMap, make_plan
from p4r.store.edge_payloads import PayloadTable, payloads_file, write_payload_table
from p4r.store.lifecycle import check_dataset
from p4r.store.naming import point_id
from tests.conftest import upsert

NAME = "p4r_t_personas_v1"
ODD_PAYLOADS = [
    {"item_id": "i00", "persona_id": "P0", "name": "Ünïcode ☕ — 日本", "description": "",
     "rationale": "tab\there, newline\nthere"},
    {"item_id": "i01", "persona_id": "P0", "name": "unit\x1fseparator inside",
     "description": "x" * 5000, "rationale": "r"},
    {"item_id": "i02", "persona_id": "P1", "name": "n", "description": "d", "rationale": "r",
     "rating": 4.5, "tags": ["a", {"b": None}], "count": 2**40, "flag": True},
    {"item_id": "i03"},  # keys other rows have are absent here
    {},
]


def _sealed(tmp_path: Path, payloads: list[dict], *, kind: str = "personas",
            dim: int = 8) -> tuple[EdgeBackend, list[int]]:
    store = EdgeBackend(tmp_path / "edge")
    store.create_collection(CollectionSpec(name=NAME, dim=dim, group_by=("item_id",),
                                           metadata={"kind": kind}))
    ids = [point_id("t", str(i)) for i in range(len(payloads))]
    vectors = np.random.default_rng(0).normal(size=(len(ids), dim)).astype(np.float32)
    store.upsert(NAME, ids, vectors, payloads)
    store.seal(NAME)
    return store, ids


def _engine_payloads(store: EdgeBackend, ids: list[int]) -> dict:
    return {r.id: r.payload for r in store._shard(NAME).retrieve(ids, True, False)}


def test_table_rows_equal_the_engine_payloads(tmp_path: Path) -> None:
    """Strings (unicode, control characters, the separator itself), numbers, lists, nulls
    and absent keys all come back exactly as the engine holds them."""
    store, ids = _sealed(tmp_path, ODD_PAYLOADS)
    assert store.get_metadata(NAME)["payload_table"]["count"] == len(ids)
    expected = _engine_payloads(store, ids)
    assert store.retrieve_payloads(NAME, ids) == expected
    assert store.retrieve_payloads(NAME, ids[::-1][:2]) == {i: expected[i] for i in ids[::-1][:2]}
    assert store.retrieve_payloads(NAME, [ids[0], 12345, point_id("nope")]) == \
        {ids[0]: expected[ids[0]]}, "ids the collection lacks are absent, as from the engine"
    assert store.retrieve_payloads(NAME, ["not-an-id"]) == {}
    store.close()

    reader = EdgeBackend(tmp_path / "edge")  # another process: reads the file, not the engine
    reader._shards[NAME] = _NoPayloadReads(reader._shard(NAME))  # type: ignore[assignment]
    assert reader.retrieve_payloads(NAME, ids) == expected
    reader.close()


class _NoPayloadReads:
    """A shard that fails any point read (every other call goes through)."""

    def __init__(self, shard: object) -> None:
        self._shard = shard

    def retrieve(self, *args: object) -> None:
        pytest.fail("payloads read from the engine")

    def __getattr__(self, name: str) -> object:
        return getattr(self._shard, name)


def test_a_generated_table_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rows = [(int(pid), {"item_id": f"i{pid % 7}", "name": "".join(
        chr(int(c)) for c in rng.integers(32, 0x2FFF, size=int(rng.integers(0, 40))))})
            for pid in rng.choice(2**62, size=300, replace=False)]
    path = tmp_path / "payloads.bin"
    record = write_payload_table(path, rows)
    table = PayloadTable(path, "fix it", record)
    wanted = [pid for pid, _ in rows[::3]]
    assert table.get_many(wanted) == {pid: payload for pid, payload in rows[::3]}
    assert table.get_many([]) == {}
    table.close()


def test_only_kinds_whose_payloads_responses_show_get_a_table(tmp_path: Path) -> None:
    store, ids = _sealed(tmp_path, ODD_PAYLOADS, kind="summaries")
    assert "payload_table" not in store.get_metadata(NAME)
    assert not payloads_file(store.root / NAME).exists()
    assert store.retrieve_payloads(NAME, ids) == _engine_payloads(store, ids)
    store.close()


def test_a_version_sealed_before_tables_reads_the_engine(tmp_path: Path) -> None:
    store, ids = _sealed(tmp_path, ODD_PAYLOADS)
    store.close()
    meta = json.loads((tmp_path / "edge" / NAME / "meta.json").read_text())
    del meta["payload_table"]  # as sealing wrote it before payload tables existed
    (tmp_path / "edge" / NAME / "meta.json").write_text(json.dumps(meta))
    payloads_file(tmp_path / "edge" / NAME).unlink()
    reader = EdgeBackend(tmp_path / "edge")
    assert reader.check_collection(NAME) == []
    assert reader.retrieve_payloads(NAME, ids) == _engine_payloads(reader, ids)
    reader.close()


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x20
    path.write_bytes(bytes(data))


TABLE_DAMAGE = {
    "deleted": lambda p: p.unlink(),
    "garbage": lambda p: p.write_bytes(b"not a table at all"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-7]),
    "one byte changed": _flip_last_byte,
    "empty": lambda p: p.write_bytes(b""),
}


@pytest.mark.parametrize("damage", sorted(TABLE_DAMAGE))
def test_a_damaged_table_is_reported_and_never_served(tmp_path: Path, damage: str) -> None:
    store, ids = _sealed(tmp_path, ODD_PAYLOADS)
    store.close()
    path = payloads_file(tmp_path / "edge" / NAME)
    TABLE_DAMAGE[damage](path)
    reader = EdgeBackend(tmp_path / "edge")
    problems = reader.check_collection(NAME)
    assert len(problems) == 1 and str(path) in problems[0], problems
    with pytest.raises(DamagedStoreError, match="payload table"):
        reader.retrieve_payloads(NAME, ids)
    with pytest.raises(DamagedStoreError):  # asked again: still refused, never half-served
        reader.retrieve_payloads(NAME, ids[:1])
    reader.close()


def test_a_table_from_another_sealing_is_refused(tmp_path: Path) -> None:
    """A well-formed table whose checksum is not the one the collection recorded (copied
    from another version) is refused too."""
    store, ids = _sealed(tmp_path, ODD_PAYLOADS)
    store.close()
    path = payloads_file(tmp_path / "edge" / NAME)
    write_payload_table(path, [(ids[0], {"name": "someone else"})])
    reader = EdgeBackend(tmp_path / "edge")
    assert any("recorded" in p for p in reader.check_collection(NAME))
    with pytest.raises(DamagedStoreError):
        reader.retrieve_payloads(NAME, ids)
    reader.close()


@pytest.mark.parametrize("damage", ["one byte changed", "deleted"])
def test_a_damaged_table_stops_the_reranker(damage: str, tmp_path: Path, demo_dataset,  # type: ignore[no-untyped-def]
                                            tiny_encoder) -> None:
    store = EdgeBackend(tmp_path / "edge")
    upsert(demo_dataset, store, tiny_encoder)
    result = Reranker("demo", store).rerank(user_id="u-ana", candidates=["cafe-lumen"])
    assert result.items[0].persona is not None
    store.close()
    TABLE_DAMAGE[damage](payloads_file(store.root / "p4r_demo_personas_v1"))
    store = EdgeBackend(tmp_path / "edge")
    report = check_dataset(store, "demo")
    assert not report["ok"] and any("payload table" in p for p in report["problems"])
    with pytest.raises(DamagedStoreError):
        Reranker("demo", store).rerank(user_id="u-ana", candidates=["cafe-lumen"])
    store.close()


def test_explanations_are_unchanged_by_the_table(tmp_path: Path, demo_dataset,  # type: ignore[no-untyped-def]
                                                 tiny_encoder) -> None:
    """Every item's explanation from the table equals the one read from the engine."""
    store = EdgeBackend(tmp_path / "edge")
    upsert(demo_dataset, store, tiny_encoder)
    items = sorted(demo_dataset.personas)
    users = ["u-ana", "u-chloe"]
    fast = [Reranker("demo", store).rerank(user_id=u, candidates=items).items for u in users]
    store.close()
    meta_path = store.root / "p4r_demo_personas_v1" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["payload_table"]
    meta_path.write_text(json.dumps(meta))
    store = EdgeBackend(tmp_path / "edge")
    slow = [Reranker("demo", store).rerank(user_id=u, candidates=items).items for u in users]
    assert fast == slow and all(i.persona is not None for i in fast[0])
    store.close()


# -- query plans -------------------------------------------------------------------------------
def _grouped(tmp_path: Path, n_items: int = 40, dim: int = 8) -> EdgeBackend:
    rng = np.random.default_rng(2)
    store = EdgeBackend(tmp_path / "edge")
    store.create_collection(CollectionSpec(name=NAME, dim=dim, group_by=("item_id",),
                                           metadata={"kind": "personas"}))
    ids, payloads = [], []
    for item in range(n_items):
        for p in range(int(rng.integers(1, 6))):
            ids.append(point_id("t", f"i{item:02d}", f"P{p}"))
            payloads.append({"item_id": f"i{item:02d}", "persona_id": f"P{p}"})
    store.upsert(NAME, ids, rng.normal(size=(len(ids), dim)).astype(np.float32), payloads)
    store.seal(NAME)
    return store


def test_cached_plans_never_mix_two_candidate_sets(tmp_path: Path) -> None:
    """Answers through cached plans equal answers from fresh plans, whatever sets (subsets,
    reorderings, unknown items, limits) were planned before."""
    store = _grouped(tmp_path)
    rng = np.random.default_rng(9)
    items = [f"i{i:02d}" for i in range(40)] + ["unknown-a", "unknown-b"]
    sets = [list(rng.choice(items, size=int(rng.integers(1, 12)), replace=False))
            for _ in range(40)]
    sets += [s[::-1] for s in sets[:10]] + [s[:-1] for s in sets[:10] if len(s) > 1]
    queries = rng.normal(size=(len(sets), 8)).astype(np.float32)
    limits = [None if i % 3 else int(rng.integers(1, 5)) for i in range(len(sets))]
    cold = []
    for query, values, limit in zip(queries, sets, limits, strict=True):
        store._group_map(NAME, "item_id").forget_plans()
        cold.append(store.best_per_group(NAME, query[None, :], [values], limits=[limit])[0])
    for _ in range(3):  # planned, cached at the second sighting, then answered from cache
        order = rng.permutation(len(sets))
        warm = store.best_per_group(NAME, queries[order], [sets[i] for i in order],
                                    limits=[limits[i] for i in order])
        assert [warm[list(order).index(i)] for i in range(len(sets))] == cold
    assert store._group_map(NAME, "item_id").cached_plans == len({
        (tuple(v), limit) for v, limit in zip(sets, limits, strict=True)})
    store.close()


def test_plans_are_keyed_by_the_exact_candidates_and_limit() -> None:
    members = {"a": (1, 2), "b": (3,), "c": (4, 5, 6)}
    index = GroupMap(members, multivector=False)  # type: ignore[arg-type]
    assert index.plan(["a", "b"], "item_id", None) is not \
        index.plan(["a", "b"], "item_id", None), "cached the second time the set comes"
    first = index.plan(["a", "b"], "item_id", None)
    assert index.plan(["a", "b"], "item_id", None) is first, "the same set reuses its plan"
    for _ in range(2):
        assert index.plan(["a", "c"], "item_id", None) is not first
        assert index.plan(["a", "b"], "item_id", 1) is not first
    assert index.cached_plans == 3
    assert index.plan(["a", "b"], "item_id", None).group_of == {1: "a", 2: "a", 3: "b"}
    empty = index.plan(["zzz"], "item_id", None)
    assert empty.filter is None and empty.present == ()
    assert make_plan(["c", "a", "c"], members, "item_id", 1, False).limit == 1  # type: ignore[arg-type]


def test_the_plan_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import p4r.store.edge_groups as edge_groups

    monkeypatch.setattr(edge_groups, "PLAN_CACHE_VALUES", 10)
    index = GroupMap({f"g{i}": (i,) for i in range(100)}, multivector=False)  # type: ignore[arg-type]
    for start in range(0, 90, 3):
        index.plan([f"g{start + j}" for j in range(3)], "item_id", None)
    assert index.cached_plans == 0, "a set seen once is not cached"
    for start in range(0, 90, 3):
        index.plan([f"g{start + j}" for j in range(3)], "item_id", None)
    assert index.cached_plans == 3  # 3 values each, at most 10 values held
    assert index._planned <= 10


# -- small collections, warm-up ----------------------------------------------------------------
def test_sealing_leaves_no_fixed_size_vector_chunk(tmp_path: Path) -> None:
    """A sealed small collection is one immutable segment sized to its data (an appendable
    one keeps its vectors in a 32 MB chunk held in memory)."""
    store = _grouped(tmp_path)
    store.close()
    shard = tmp_path / "edge" / NAME / "shard"
    chunks = [p for p in shard.rglob("chunk_*.mmap") if p.stat().st_blocks]
    assert chunks == [], chunks
    matrices = list(shard.rglob("matrix.dat"))
    assert len(matrices) == 1 and matrices[0].stat().st_size < 1 << 20


def test_opening_a_sealed_collection_reads_what_requests_need(tmp_path: Path) -> None:
    store = _grouped(tmp_path)
    store.close()
    reader = EdgeBackend(tmp_path / "edge")
    assert reader.count(NAME) > 0  # what a reranker's bind does first
    assert (NAME, "item_id") in reader._groups
    assert reader._tables.get(("payload_table", NAME)) is not None
    assert reader._group_map(NAME, "item_id").cached_plans == 0, "warm-up plans are dropped"
    reader.close()


def test_a_damaged_groups_file_still_opens_for_check_and_drop(tmp_path: Path) -> None:
    store = _grouped(tmp_path)
    store.close()
    (tmp_path / "edge" / NAME / "groups.item_id.npz").write_bytes(b"garbage")
    reader = EdgeBackend(tmp_path / "edge")
    assert reader.count(NAME) > 0
    assert reader.check_collection(NAME)
    reader.drop_collection(NAME)
    assert not reader.collection_exists(NAME)
    reader.close()
