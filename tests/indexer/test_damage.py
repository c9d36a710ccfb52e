"""A damaged or near-empty index never goes live: verified 'unchanged', check, shrink guard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from p4r.cli.index import main as index_cli
from p4r.cli.query import main as query_cli
from p4r.errors import DamagedStoreError
from p4r.indexer import ShrinkError
from p4r.query import Reranker
from p4r.store.edge import EdgeBackend
from p4r.store.lifecycle import check_dataset
from tests.conftest import DEMO, upsert


def _shard(store: EdgeBackend, kind: str = "personas", version: int = 1) -> Path:
    return store.root / f"p4r_demo_{kind}_v{version}" / "shard"


DAMAGE = {
    "segments deleted": lambda s: shutil.rmtree(_shard(s) / "segments"),
    "edge_config.json emptied": lambda s: (_shard(s) / "edge_config.json").write_text(""),
    "meta.json garbage": lambda s: (s.root / "p4r_demo_personas_v1" / "meta.json")
    .write_text("{not json"),
    "whole shard deleted": lambda s: shutil.rmtree(_shard(s, "summaries")),
    "groups file garbage": lambda s: (s.root / "p4r_demo_personas_v1" / "groups.item_id.npz")
    .write_bytes(b"PK\x03\x04 not a zip"),
    "groups file deleted": lambda s: (s.root / "p4r_demo_personas_v1" / "groups.item_id.npz")
    .unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_live_version_is_rebuilt_not_unchanged(  # type: ignore[no-untyped-def]
    damage: str, tmp_path: Path, demo_dataset, tiny_encoder
) -> None:
    store = EdgeBackend(tmp_path / "edge")
    upsert(demo_dataset, store, tiny_encoder)
    store.close()
    DAMAGE[damage](store)
    store = EdgeBackend(tmp_path / "edge")
    report = check_dataset(store, "demo")
    assert not report["ok"] and report["problems"], damage
    with pytest.raises(DamagedStoreError):  # never served as if it were fine
        Reranker("demo", store).rerank(user_id="u-ana",
                                                            candidates=["cafe-lumen"])
    rebuilt = upsert(demo_dataset, store, tiny_encoder)
    assert rebuilt.action == "rebuilt" and rebuilt.version == 2 and rebuilt.problems
    assert check_dataset(store, "demo")["ok"]
    assert upsert(demo_dataset, store, tiny_encoder).action == "unchanged"
    result = Reranker("demo", store).rerank(
        user_id="u-ana", candidates=["cafe-lumen", "tide-sushi"])
    assert [i.explanation for i in result.items] == ["persona", "persona"]


def test_garbage_alias_record_is_named_then_repaired(tmp_path: Path, demo_dataset,  # type: ignore[no-untyped-def]
                                                     tiny_encoder) -> None:
    store = EdgeBackend(tmp_path / "edge")
    upsert(demo_dataset, store, tiny_encoder)
    (store.root / "aliases.json").write_text('{"p4r_demo_pers')
    with pytest.raises(DamagedStoreError, match=r"aliases\.json \(alias record\) is damaged"):
        Reranker("demo", store)
    report = upsert(demo_dataset, store, tiny_encoder)
    assert report.action == "unchanged", "the versions were whole: only the record was bad"
    assert any("restored" in p for p in report.problems)
    assert json.loads((store.root / "aliases.json").read_text())["p4r_demo_personas"]


def test_near_empty_input_does_not_replace_the_live_index(tmp_path: Path, demo_dataset,  # type: ignore[no-untyped-def]
                                                          tiny_encoder) -> None:
    store = EdgeBackend(tmp_path / "edge")
    upsert(demo_dataset, store, tiny_encoder)
    demo_dataset.personas = {"cafe-lumen": demo_dataset.personas["cafe-lumen"]}
    with pytest.raises(ShrinkError, match=r"personas 34 → 3.*items 11 → 1"):
        upsert(demo_dataset, store, tiny_encoder)
    assert Reranker("demo", store).version == 1
    forced = upsert(demo_dataset, store, tiny_encoder, allow_shrink=True)
    assert forced.version == 2


def test_cli_check_and_shrink_messages(tmp_path: Path, tiny_models,  # type: ignore[no-untyped-def]
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
    runner = CliRunner()
    assert runner.invoke(index_cli, ["upsert", "-d", "demo"]).exit_code == 0
    ok = runner.invoke(index_cli, ["check", "-d", "demo"])
    assert ok.exit_code == 0 and "demo v1 (live): ok" in ok.output
    data = tmp_path / "empty"
    shutil.copytree(DEMO, data)
    (data / "personas.jsonl").write_text("")
    refused = runner.invoke(index_cli, ["upsert", "-d", "demo", "--data-dir", str(data)])
    assert refused.exit_code == 1
    assert "personas 34 → 0" in refused.output and "--allow-shrink" in refused.output
    store = tmp_path / "p4r-data" / "edge"
    shutil.rmtree(store / "p4r_demo_personas_v1" / "shard" / "segments")
    bad = runner.invoke(index_cli, ["check", "-d", "demo"])
    assert bad.exit_code == 1 and "DAMAGED" in bad.output and "holds 0 points" in bad.output
    query = runner.invoke(query_cli, ["rerank", "-d", "demo", "-u", "u-ana", "-c", "cafe-lumen"])
    assert query.exit_code == 1 and "p4r index check --dataset demo" in query.output
    status = runner.invoke(index_cli, ["status", "-d", "demo"])
    assert status.exit_code == 0 and "DAMAGED" in status.output
