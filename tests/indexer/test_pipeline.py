"""Upsert pipeline on every backend: counts, idempotence, resume, and nothing half-built live."""

from __future__ import annotations

import pytest

from p4r.encoder.cache import EmbeddingCache
from p4r.errors import ConfigError, NotFoundError
from p4r.indexer import plan_points
from p4r.settings import ProfileParams
from p4r.store.base import Backend
from p4r.store.lifecycle import dataset_status, drop_dataset
from p4r.store.naming import alias_name, collection_name
from tests.conftest import upsert


class Interrupt(KeyboardInterrupt):
    """Raised from the progress hook to simulate Ctrl-C mid-build."""


def test_first_upsert_builds_and_publishes(backend: Backend, demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    report = upsert(demo_dataset, backend, tiny_encoder, batch_size=8)
    assert report.action == "created" and report.version == 1
    status = dataset_status(backend, "demo")
    assert {k: status[k] for k in ("personas", "items", "summaries", "interactions", "users")} == {
        "personas": 34, "items": 11, "summaries": 12, "interactions": 18, "users": 4}
    assert status["collection"] == "p4r_demo_personas_v1"
    assert status["alias"] == "p4r_demo_personas"
    assert status["encoder"] == tiny_encoder.fingerprint.as_dict()
    assert status["versions"] == {"1": "complete"}


def test_second_run_is_a_no_op(backend: Backend, demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    upsert(demo_dataset, backend, tiny_encoder)
    before = dataset_status(backend, "demo")
    report = upsert(demo_dataset, backend, tiny_encoder)
    assert report.action == "unchanged" and report.encoded == 0
    assert dataset_status(backend, "demo") == before


def test_changed_data_builds_a_new_version(backend: Backend, demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    upsert(demo_dataset, backend, tiny_encoder, full=True)
    removed = demo_dataset.personas.pop("tide-sushi")
    report = upsert(demo_dataset, backend, tiny_encoder, full=True)
    assert report.version == 2 and report.action == "created"
    status = dataset_status(backend, "demo")
    assert status["personas"] == 34 - len(removed) and status["items"] == 10
    assert status["versions"] == {"1": "complete", "2": "complete"}, "old versions are kept"
    assert backend.get_aliases()[alias_name("demo")] == collection_name("demo", "personas", 2)


def test_interrupted_build_is_invisible_then_resumes(
    backend: Backend, demo_dataset, tiny_encoder, tmp_path  # type: ignore[no-untyped-def]
) -> None:
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    upsert(demo_dataset, backend, tiny_encoder, full=True, cache=cache)
    demo_dataset.personas["tide-sushi"] = demo_dataset.personas["tide-sushi"][:1]

    def crash(kind: str, done: int) -> None:
        if kind == "summaries":
            raise Interrupt()

    with pytest.raises(Interrupt):
        upsert(demo_dataset, backend, tiny_encoder, full=True, batch_size=4, cache=cache,
                       on_batch=crash)
    # queries still see the complete version 1 through the alias
    assert backend.get_aliases()[alias_name("demo")] == collection_name("demo", "personas", 1)
    assert dataset_status(backend, "demo")["personas"] == 34
    assert backend.get_metadata(collection_name("demo", "personas", 2))["state"] == "building"

    encoded: list[int] = []

    class Counting:
        fingerprint = tiny_encoder.fingerprint

        def encode(self, texts):  # type: ignore[no-untyped-def]
            encoded.append(len(texts))
            return tiny_encoder.encode(texts)

    report = upsert(demo_dataset, backend, Counting(), batch_size=4, cache=cache)
    assert report.action == "resumed" and report.version == 2
    assert report.encoded == 0, "nothing is encoded twice: stored points and cache are reused"
    status = dataset_status(backend, "demo")
    assert status["personas"] == 33 and status["summaries"] == 12
    assert status["interactions"] == 18
    assert backend.get_aliases()[alias_name("demo")] == collection_name("demo", "personas", 2)
    cache.close()


def test_abandoned_build_of_other_data_is_discarded(
    backend: Backend, demo_dataset, tiny_encoder  # type: ignore[no-untyped-def]
) -> None:
    def crash(kind: str, done: int) -> None:
        raise Interrupt()

    with pytest.raises(Interrupt):
        upsert(demo_dataset, backend, tiny_encoder, on_batch=crash)
    with pytest.raises(NotFoundError, match="not indexed"):
        dataset_status(backend, "demo")
    demo_dataset.personas.pop("tide-sushi")
    report = upsert(demo_dataset, backend, tiny_encoder)
    assert report.action == "created"
    assert set(dataset_status(backend, "demo")["versions"]) == {str(report.version)}


def test_dimension_mismatch_is_refused(
    backend: Backend, demo_dataset, tiny_encoder, minilm  # type: ignore[no-untyped-def]
) -> None:
    upsert(demo_dataset, backend, tiny_encoder)
    with pytest.raises(ConfigError, match=r"vector dimension mismatch: .* 32-d .* 384-d"):
        upsert(demo_dataset, backend, minilm)
    assert dataset_status(backend, "demo")["versions"] == {"1": "complete"}, "nothing written"


def test_fingerprint_mismatch_needs_reindex(
    backend: Backend, demo_dataset, tiny_encoder, tiny_models  # type: ignore[no-untyped-def]
) -> None:
    from p4r.encoder.model import Encoder
    from p4r.settings import EncoderSettings

    other = Encoder(EncoderSettings(model=str(tiny_models["b"])))
    upsert(demo_dataset, backend, tiny_encoder)
    with pytest.raises(ConfigError, match="encoder fingerprint mismatch"):
        upsert(demo_dataset, backend, other)
    report = upsert(demo_dataset, backend, other, reindex=True)
    assert report.version == 2
    assert dataset_status(backend, "demo")["encoder"] == other.fingerprint.as_dict()


def test_drop_removes_everything(backend: Backend, demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    upsert(demo_dataset, backend, tiny_encoder)
    dropped = drop_dataset(backend, "demo")
    # The version's personas and summaries, and the user state (interactions and profiles:
    # one sqlite file on Edge, two collections on a server).
    assert set(dropped.collections) == {"p4r_demo_personas_v1", "p4r_demo_summaries_v1"}
    assert len(dropped.user_state) in (1, 2)
    assert not [a for a in backend.get_aliases() if a.startswith("p4r_demo")]
    assert not [c for c in backend.list_collections() if c.startswith("p4r_demo")]
    assert backend.user_store("demo", tiny_encoder.fingerprint, ProfileParams()).counts() == {
        "interactions": 0, "users": 0, "forgotten": 0}


def test_point_ids_are_deterministic(demo_dataset) -> None:  # type: ignore[no-untyped-def]
    first, second = plan_points(demo_dataset), plan_points(demo_dataset)
    assert [p.id for p in first["personas"]] == [p.id for p in second["personas"]]
    assert len({p.id for p in first["interactions"]}) == 18
