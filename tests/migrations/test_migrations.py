"""Schema migrations and the swap history in the store, on every backend; prune; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from p4r.cli.index import main as index_cli
from p4r.errors import ConfigError
from p4r.indexer import plan
from p4r.migrations import MIGRATIONS, apply_migrations, migrate, pending_migrations
from p4r.query import Reranker
from p4r.settings import EncoderSettings
from p4r.store import catalog, lifecycle
from p4r.store.base import Backend
from p4r.store.edge import EdgeBackend
from p4r.store.history import RECORD_COLLECTION, applied_schema, swap_history
from p4r.store.lifecycle import dataset_status, drop_dataset, prune_plan, prune_versions
from p4r.store.naming import alias_name, collection_name
from tests.conftest import upsert


class Crash(RuntimeError):
    """Simulates the process dying between two steps of a swap."""


@pytest.fixture(scope="module")
def encoder_b(tiny_models):  # type: ignore[no-untyped-def]
    """The second tiny encoder: same dimension, other weights (a re-index)."""
    from p4r.encoder.model import Encoder

    return Encoder(EncoderSettings(model=str(tiny_models["b"]), threads=1))


def swaps(backend: Backend) -> list[tuple[int | None, int | None, str, str]]:
    """(from, to, reason, state) of every swap of the demo dataset, oldest first."""
    history = swap_history(backend, "demo")
    return [(r.from_version, r.to_version, r.reason, r.state) for r in history]


def forget_record(backend: Backend) -> None:
    """Delete the record the way a store indexed before it existed lacks it."""
    if isinstance(backend, EdgeBackend):
        (backend.root / "records.json").unlink()
    else:
        backend.drop_collection(RECORD_COLLECTION)


def test_legacy_edge_record_shard_is_imported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Stores written before records.json kept the record in an Edge shard: it moves over."""
    from p4r.store.base import CollectionSpec

    store = EdgeBackend(tmp_path / "edge")
    store.create_collection(CollectionSpec(name=RECORD_COLLECTION, dim=1,
                                           keyword_indexes=("kind", "dataset")))
    store.upsert(RECORD_COLLECTION, ["0b7e7c1e-4b7a-5d2e-9c1a-2b9e8f4d0a11"],
                 np.ones((1, 1), dtype=np.float32),
                 [{"kind": "schema", "name": "m001_record_collection", "applied_at": 1.0}])
    assert set(applied_schema(store)) == {"m001_record_collection"}
    apply_migrations(store)
    assert not store.collection_exists(RECORD_COLLECTION), "the old shard is gone"
    assert set(applied_schema(store)) == {m.name for m in MIGRATIONS}


def test_apply_is_ordered_and_idempotent(backend: Backend) -> None:
    names = [m.name for m in MIGRATIONS]
    assert names == sorted(names) and names[0] == "m001_record_collection"
    assert pending_migrations(backend) == names
    assert apply_migrations(backend) == names
    assert backend.record_exists()
    assert set(applied_schema(backend)) == set(names)
    assert apply_migrations(backend) == [], "a second run applies nothing"
    assert pending_migrations(backend) == []
    assert migrate(backend) == ([], [])


def test_record_collection_is_not_a_dataset_version(  # type: ignore[no-untyped-def]
    backend: Backend, demo_dataset, tiny_encoder
) -> None:
    upsert(demo_dataset, backend, tiny_encoder)
    assert backend.record_exists()
    assert list(catalog.versions(backend, "demo")) == [1]
    dropped = drop_dataset(backend, "demo")
    assert set(dropped.collections) == {"p4r_demo_personas_v1", "p4r_demo_summaries_v1"}, \
        "drop leaves the record alone"
    assert backend.record_exists()


def test_every_swap_is_recorded(  # type: ignore[no-untyped-def]
    backend: Backend, demo_dataset, tiny_encoder, encoder_b
) -> None:
    upsert(demo_dataset, backend, tiny_encoder, full=True)
    upsert(demo_dataset, backend, tiny_encoder, full=True)  # unchanged: no swap
    demo_dataset.personas.pop("tide-sushi")
    upsert(demo_dataset, backend, tiny_encoder, full=True)
    report = upsert(demo_dataset, backend, encoder_b, reindex=True)
    assert report.version == 3
    assert swaps(backend) == [(None, 1, "created", "applied"), (1, 2, "update", "applied"),
                              (2, 3, "reindex", "applied")]
    history = swap_history(backend, "demo")
    assert [r.seq for r in history] == [1, 2, 3]
    assert history[0].encoder == tiny_encoder.fingerprint.as_dict()
    assert history[2].encoder == encoder_b.fingerprint.as_dict()
    assert history[2].counts == report.counts
    assert all(r.time > 0 and r.applied_at and r.applied_at >= r.time for r in history)
    status = dataset_status(backend, "demo")
    assert [(m["from_version"], m["to_version"]) for m in status["migrations"]] == [
        (None, 1), (1, 2), (2, 3)]
    drop_dataset(backend, "demo")
    assert swaps(backend)[-1] == (3, None, "dropped", "applied")


def test_crash_after_the_swap_is_repaired(  # type: ignore[no-untyped-def]
    backend: Backend, demo_dataset, tiny_encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    upsert(demo_dataset, backend, tiny_encoder, full=True)
    demo_dataset.personas.pop("tide-sushi")

    def die(*args: object, **kwargs: object) -> None:
        raise Crash()

    with monkeypatch.context() as patch, pytest.raises(Crash):
        patch.setattr(lifecycle, "finish_swap", die)
        upsert(demo_dataset, backend, tiny_encoder, full=True)
    assert catalog.live_version(backend, "demo") == 2, "the aliases moved"
    assert swaps(backend)[-1] == (1, 2, "update", "pending")
    applied, repaired = migrate(backend)
    assert applied == [] and [(r.to_version, r.state, r.repaired) for r in repaired] == [
        (2, "applied", True)]
    assert swaps(backend) == [(None, 1, "created", "applied"), (1, 2, "update", "applied")]


def test_crash_before_the_swap_is_abandoned_then_published(  # type: ignore[no-untyped-def]
    backend: Backend, demo_dataset, tiny_encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    upsert(demo_dataset, backend, tiny_encoder, full=True)
    demo_dataset.personas.pop("tide-sushi")

    def die(*args: object, **kwargs: object) -> None:
        raise Crash()

    with monkeypatch.context() as patch, pytest.raises(Crash):
        patch.setattr(lifecycle.catalog, "swap_aliases", die)
        upsert(demo_dataset, backend, tiny_encoder, full=True)
    assert catalog.live_version(backend, "demo") == 1, "queries never saw version 2"
    assert swaps(backend)[-1] == (1, 2, "update", "pending")
    report = upsert(demo_dataset, backend, tiny_encoder, full=True)
    assert (report.version, report.action, report.encoded) == (2, "reused", 0)
    assert swaps(backend) == [(None, 1, "created", "applied"), (1, 2, "update", "abandoned"),
                              (1, 2, "update", "applied")]


def test_store_indexed_before_the_record_gets_its_live_version(  # type: ignore[no-untyped-def]
    backend: Backend, demo_dataset, tiny_encoder
) -> None:
    upsert(demo_dataset, backend, tiny_encoder)
    forget_record(backend)  # as if indexed by a p4r without migrations
    assert swap_history(backend, "demo") == []
    assert apply_migrations(backend) == [m.name for m in MIGRATIONS]
    history = swap_history(backend, "demo")
    assert swaps(backend) == [(None, 1, "unrecorded", "applied")]
    assert history[0].encoder == tiny_encoder.fingerprint.as_dict() and history[0].repaired


def test_prune_keeps_the_live_version(  # type: ignore[no-untyped-def]
    backend: Backend, demo_dataset, tiny_encoder, encoder_b, tiny_models
) -> None:
    upsert(demo_dataset, backend, tiny_encoder, full=True)
    demo_dataset.personas.pop("tide-sushi")
    upsert(demo_dataset, backend, tiny_encoder, full=True)
    upsert(demo_dataset, backend, encoder_b, reindex=True)
    assert [v.version for v in prune_plan(backend, "demo", keep=2)] == [1]
    assert [v.version for v in prune_plan(backend, "demo", keep=3)] == []
    removed = prune_versions(backend, "demo")
    assert [(v.version, v.state, len(v.collections)) for v in removed] == [
        (1, "complete", 2), (2, "complete", 2)], "a version is its personas and summaries"
    assert list(catalog.versions(backend, "demo")) == [3]
    assert backend.get_aliases()[alias_name("demo")] == collection_name("demo", "personas", 3)
    assert prune_versions(backend, "demo") == [], "nothing left to prune"
    reranker = Reranker("demo", backend, encoder=EncoderSettings(model=str(tiny_models["b"])))
    assert len(reranker.rerank(user_id="u-ben", candidates=["cafe-lumen"]).items) == 1
    with pytest.raises(ConfigError, match="at least 1"):
        prune_plan(backend, "demo", keep=0)


def test_prune_removes_an_abandoned_build(backend: Backend, demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    def crash(kind: str, done: int) -> None:
        raise KeyboardInterrupt()

    with pytest.raises(KeyboardInterrupt):
        upsert(demo_dataset, backend, tiny_encoder, full=True, on_batch=crash)
    removed = prune_versions(backend, "demo")
    assert [(v.version, v.state) for v in removed] == [(1, "building")], "nothing is live yet"
    assert catalog.versions(backend, "demo") == {}

    upsert(demo_dataset, backend, tiny_encoder, full=True)
    demo_dataset.personas.pop("tide-sushi")
    with pytest.raises(KeyboardInterrupt):
        upsert(demo_dataset, backend, tiny_encoder, full=True, on_batch=crash)
    assert dataset_status(backend, "demo")["versions"] == {"1": "complete", "2": "building"}
    removed = prune_versions(backend, "demo", keep=5)
    assert [(v.version, v.state) for v in removed] == [(2, "building")]
    assert dataset_status(backend, "demo")["versions"] == {"1": "complete"}
    assert catalog.live_version(backend, "demo") == 1


# -- CLI -----------------------------------------------------------------------------------------
def run(*args: str, ok: bool = True, input_: str | None = None) -> Result:
    """Invoke p4r-index; assert the exit status."""
    result = CliRunner().invoke(index_cli, list(args), input=input_, catch_exceptions=False)
    assert (result.exit_code == 0) == ok, result.output
    return result


def test_cli_migrate_status_prune(  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch, tiny_models: dict[str, Path]
) -> None:
    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
    first = run("migrate").output
    assert "applied m001_record_collection" in first and "applied m002" in first
    assert "up to date" in run("migrate").output
    assert json.loads(run("migrate", "--json").stdout)["applied"] == []

    run("upsert", "-d", "demo")
    run("upsert", "-d", "demo", "--encoder", str(tiny_models["b"]))
    status = json.loads(run("status", "-d", "demo", "--json").stdout)
    assert status["versions"] == {"1": "complete", "2": "complete"}
    assert [(m["from_version"], m["to_version"], m["reason"], m["state"])
            for m in status["migrations"]] == [(None, 1, "created", "applied"),
                                               (1, 2, "reindex", "applied")]
    human = run("status", "-d", "demo").output
    assert "v1 → v2 reindex [applied]" in human and "- → v1 created" in human

    assert "Aborted" in run("prune", "-d", "demo", input_="n\n", ok=False).output
    out = run("prune", "-d", "demo", "--yes").output
    assert "removed v1 (complete)" in out and "pruned 1 version(s), 2 collection(s)" in out
    assert "nothing to prune" in run("prune", "-d", "demo", "--yes").output
    assert json.loads(run("status", "-d", "demo", "--json").stdout)["versions"] == {
        "2": "complete"}


def test_uuid_id_store_moves_to_integer_ids(  # type: ignore[no-untyped-def]
    backend: Backend, demo_dataset, tiny_encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration m003 rebuilds a uuid-id version from the store alone; answers do not change."""
    from p4r.migrations.m003_integer_point_ids import rebuild_with_integer_ids
    from p4r.store.naming import DEFAULT_KINDS, legacy_point_id

    with monkeypatch.context() as patch:  # build v1 the way p4r did before integer ids
        patch.setattr(plan, "point_id", legacy_point_id)
        upsert(demo_dataset, backend, tiny_encoder)
    for kind in DEFAULT_KINDS:
        backend.update_metadata(collection_name("demo", kind, 1), {"id_scheme": 1})
    cands = [*sorted(demo_dataset.personas), "polar-scoop-gelato"]
    old = Reranker("demo", backend)
    assert isinstance(old.rerank(user_id="u-ana", candidates=cands).items, list)
    before = {u: old.rerank(user_id=u, candidates=cands) for u in ("u-ana", "u-ben", "u-dev")}
    assert rebuild_with_integer_ids(backend, "demo") == 2
    assert rebuild_with_integer_ids(backend, "demo") is None, "idempotent"
    new = Reranker("demo", backend)
    assert new.version == 2
    for user, result in before.items():
        after = new.rerank(user_id=user, candidates=cands)
        assert [i.item_id for i in after.items] == [i.item_id for i in result.items]
        assert [i.persona for i in after.items] == [i.persona for i in result.items]
        assert np.allclose([i.score for i in after.items], [i.score for i in result.items],
                           atol=1e-6)
    assert swaps(backend)[-1][:3] == (1, 2, "update")
