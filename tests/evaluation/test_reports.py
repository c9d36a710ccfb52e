"""p4r eval commands end to end: metrics, run (report files), loo-check; and p4r bench latency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from p4r.cli.bench import main as bench_cli
from p4r.cli.evaluation import main as eval_cli
from p4r.evaluation.loo_check import run_loo_check
from p4r.settings import EncoderSettings, IndexSettings, Settings
from p4r.store.edge import EdgeBackend
from tests.conftest import YELP, require_shared


def invoke(*args: str) -> str:
    result = CliRunner().invoke(eval_cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_metrics_command_json() -> None:
    root = require_shared(YELP)
    report = json.loads(invoke("metrics", "--candidates-file",
                               str(root / "eval_candidates.jsonl"),
                               "--gt", str(root / "eval_gt.jsonl"), "--ks", "5,10", "--json"))
    assert report["all"]["users"] == 77
    assert report["all"]["HR@10"] == pytest.approx(14 / 77)
    table = invoke("metrics", "--candidates-file", str(root / "eval_candidates.jsonl"), "--gt",
                   str(root / "eval_gt.jsonl"), "--reviews", str(root / "eval_gt.jsonl"),
                   "--scenarios")
    for row in ("all", "warm", "cold", "head", "tail"):
        assert row in table


def test_metrics_needs_reviews_for_scenarios(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text('{"user_id": "u", "results": [{"item_id": "a"}]}\n')
    result = CliRunner().invoke(eval_cli, ["metrics", "--candidates-file", str(f), "--gt", str(f),
                                           "--scenarios"])
    assert result.exit_code != 0 and "--scenarios needs --reviews" in result.output


def test_run_writes_comparison_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           tiny_models: dict[str, Path]) -> None:
    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
    out = tmp_path / "report"
    rows = json.loads(invoke("run", "--dataset", "demo", "--generator", "bpr", "--k", "8",
                             "--ks", "3,5", "--epochs", "3", "--encoder", str(tiny_models["b"]),
                             "--out-dir", str(out), "--json"))
    assert list(rows) == ["bpr", "bpr + persona4rec (vanilla)", "bpr + persona4rec (trained)",
                          "bpr + summary-only (vanilla)"]
    users = {r["users"] for r in rows.values()}
    assert users == {4}, "every variant is scored on the same test users"
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results] == list(rows)
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in (out / "split").iterdir()} == {"train.jsonl", "valid.jsonl",
                                                           "test.jsonl"}
    cands = [json.loads(x) for x in (out / "candidates_bpr.jsonl").read_text().splitlines()]
    train = [json.loads(x) for name in ("train.jsonl", "valid.jsonl")
             for x in (out / "split" / name).read_text().splitlines()]
    catalogue = {r["item_id"] for r in train}
    assert len(cands) == 4
    for c in cands:  # every unseen item of the training catalogue, up to 8, no training item
        seen = {r["item_id"] for r in train if r["user_id"] == c["user_id"]}
        listed = [r["item_id"] for r in c["results"]]
        assert not set(listed) & seen
        assert len(listed) == len(set(listed)) == min(8, len(catalogue - seen))


def test_loo_check_mechanics(tmp_path: Path, tiny_encoder, tiny_models) -> None:  # type: ignore[no-untyped-def]
    root = require_shared(YELP)
    backend = EdgeBackend(tmp_path / "edge")
    settings = Settings(index=IndexSettings(vector_datatype="float16"))
    result = run_loo_check(settings, root, backend, tiny_encoder,
                           EncoderSettings(model=str(tiny_models["a"])), users=6, seed=3)
    assert result.users == 6 and result.candidates == 20
    live = backend.get_aliases()["p4r_yelp-loo_personas"]
    assert backend.get_metadata(live)["vector_datatype"] == "float16", \
        "an evaluation indexes the way the index settings say upsert does"
    assert result.persona_scored + result.summary_scored == 6 * 20, "every candidate scored"
    assert result.random_baseline["HR@5"] == 0.25
    for metric in result.metrics.values():
        assert metric["ci_low"] <= metric["value"] <= metric["ci_high"]
    backend.close()


def test_latency_command_writes_table_and_plot(tmp_path: Path) -> None:
    result = CliRunner().invoke(bench_cli, ["latency", "--personas", "2000", "--rounds", "2",
                                            "--out-dir", str(tmp_path), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = report["rows"]
    assert [(r["study"], r["users"], r["candidates"]) for r in rows] == [
        ("users", 1, 20), ("users", 10, 20), ("users", 50, 20), ("users", 100, 20),
        ("candidates", 1, 20), ("candidates", 1, 50), ("candidates", 1, 100)]
    assert all(r["batch_ms"] > 0 and r["numpy_batch_ms"] > 0 for r in rows)
    assert (tmp_path / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "latency.json").read_text()) == rows


def test_run_trains_the_encoder_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           tiny_models: dict[str, Path]) -> None:
    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
    monkeypatch.setenv("P4R_TRAIN__EPOCHS", "2")
    out = tmp_path / "report"
    result = CliRunner().invoke(eval_cli, ["run", "--dataset", "demo", "--generator", "bpr",
                                           "--k", "8", "--ks", "3,5", "--epochs", "3",
                                           "--train", "--out-dir", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "bpr + persona4rec (trained)" in result.stdout
    assert "bootstrap 95% intervals" in result.stdout and "kept epoch" in result.stderr
    assert (out / "encoder" / "model" / "modules.json").exists()
    assert (out / "encoder" / "alignments.next-item.jsonl").exists()
    rows = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in rows][2] == "bpr + persona4rec (trained)"
    for row in rows:
        low, high = row["ci95"]["HR@5"]
        assert low <= row["HR@5"] <= high
