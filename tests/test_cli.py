"""The two console scripts end to end (Click's runner, real backends and encoders)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from p4r.cli.bench import main as bench_cli
from p4r.cli.index import main as index_cli
from p4r.cli.query import main as query_cli
from tests.conftest import DEMO, write_jsonl


def run(cli, *args: str, ok: bool = True) -> Result:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0, result.output
    return result


@pytest.fixture
def tiny_env(monkeypatch: pytest.MonkeyPatch, tiny_models: dict[str, Path]) -> dict[str, Path]:
    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
    return tiny_models


def test_main_job_on_the_default_encoder(minilm) -> None:  # type: ignore[no-untyped-def]
    out = run(index_cli, "upsert", "--dataset", "demo").output
    assert "version 1 created (34 personas, 12 summaries, 18 interactions" in out
    status = json.loads(run(index_cli, "status", "--dataset", "demo", "--json").stdout)
    for key in ("personas", "items", "summaries", "interactions", "users", "collection",
                "alias", "encoder"):
        assert key in status
    assert (status["personas"], status["items"], status["users"]) == (34, 11, 4)
    assert status["encoder"]["model"] == "all-MiniLM-L6-v2"
    again = run(index_cli, "upsert", "--dataset", "demo").output
    assert "version 1 unchanged" in again

    ranked = json.loads(run(query_cli, "rerank", "--dataset", "demo", "--user-id", "u-chloe",
                            "--candidates", "green-fern-bistro,ironwood-steakhouse,"
                            "polar-scoop-gelato", "--json").stdout)
    assert [set(r) for r in ranked] == [{"item_id", "score", "explanation", "persona",
                                         "because"}] * 3
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    by_id = {r["item_id"]: r for r in ranked}
    assert by_id["polar-scoop-gelato"]["explanation"] == "summary"
    assert by_id["polar-scoop-gelato"]["persona"] is None
    assert by_id["green-fern-bistro"]["explanation"] == "persona"
    assert set(by_id["green-fern-bistro"]["persona"]) == {"persona_id", "name", "description",
                                                          "rationale"}
    table = run(query_cli, "rerank", "-d", "demo", "-u", "u-chloe", "-c",
                "green-fern-bistro,tide-sushi", "--k", "1").output
    assert table.count("[persona]") == 1 and "persona P" in table


def test_status_and_drop(tiny_env) -> None:  # type: ignore[no-untyped-def]
    run(index_cli, "upsert", "-d", "demo", "--batch-size", "5")
    assert "personas: 34" in run(index_cli, "status", "-d", "demo").output
    assert "dropped 2 collection(s)" in run(index_cli, "drop", "-d", "demo", "--yes").output
    gone = run(index_cli, "status", "-d", "demo", ok=False).output
    assert "dataset 'demo' is not indexed" in gone


def test_config_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_QDRANT__API_KEY", "top-secret")
    out = run(index_cli, "config").output
    assert "P4R_QDRANT__API_KEY=***" in out and "top-secret" not in out
    data = json.loads(run(index_cli, "config", "--json").stdout)
    assert data["qdrant"]["api_key"] == "***" and data["backend"] == "edge"


def test_bad_input_file_is_named_and_nothing_is_indexed(tmp_path: Path, tiny_env) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad"
    for name in ("items.jsonl", "reviews.jsonl"):
        (bad / name).parent.mkdir(parents=True, exist_ok=True)
        (bad / name).write_text((DEMO / name).read_text())
    lines = (DEMO / "personas.jsonl").read_text().splitlines()
    lines[3] = lines[3].replace('"persona_id": "P2"', '"persona_id": "P1"')
    (bad / "personas.jsonl").write_text("\n".join(lines) + "\n")
    out = run(index_cli, "upsert", "-d", "mine", "--data-dir", str(bad), ok=False).output
    assert f"{bad / 'personas.jsonl'}:4: field 'personas[1].persona_id': duplicate persona id" \
        in out
    assert len(out.strip().splitlines()) == 1, "one line"
    assert "not indexed" in run(index_cli, "status", "-d", "mine", ok=False).output


def test_unknown_dataset() -> None:
    out = run(index_cli, "upsert", "-d", "nosuch", ok=False).output
    assert "unknown dataset 'nosuch'" in out and "datasets/nosuch" in out


def test_unreachable_server_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_QDRANT__URL", "http://127.0.0.1:9")
    monkeypatch.setenv("P4R_QDRANT__TIMEOUT", "2")
    out = run(index_cli, "status", "-d", "demo", "--backend", "server", ok=False).output
    assert "cannot reach Qdrant at http://127.0.0.1:9 (P4R_QDRANT__URL)" in out


def test_encoder_mismatch_at_query_and_upsert(tiny_env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    run(index_cli, "upsert", "-d", "demo")
    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_env["b"]))
    # a request by user id embeds nothing, so another configured encoder does not matter
    ranked = json.loads(run(query_cli, "rerank", "-d", "demo", "-u", "u-ana", "-c",
                            "cafe-lumen", "--json").stdout)
    assert ranked[0]["item_id"] == "cafe-lumen"
    out = run(index_cli, "upsert", "-d", "demo", ok=False).output
    assert "encoder fingerprint mismatch" in out and "--reindex" in out
    monkeypatch.setenv("P4R_ENCODER__MODEL", "all-MiniLM-L6-v2")
    out = run(index_cli, "upsert", "-d", "demo", ok=False).output
    assert "vector dimension mismatch" in out and "32-d" in out and "384-d" in out


def test_unknown_candidates_fail_unless_allowed(tiny_env) -> None:  # type: ignore[no-untyped-def]
    run(index_cli, "upsert", "-d", "demo")
    out = run(query_cli, "rerank", "-d", "demo", "-u", "u-ana", "-c", "cafe-lumen,ghost",
              ok=False).output
    assert "unknown to dataset 'demo': ghost" in out
    ranked = json.loads(run(query_cli, "rerank", "-d", "demo", "-u", "u-ana", "-c",
                            "cafe-lumen,ghost", "--allow-unknown", "--json").stdout)
    assert ranked[-1] == {"item_id": "ghost", "score": None, "explanation": "unscored",
                          "persona": None, "because": None}


def test_candidates_file_round_trip(tmp_path: Path, tiny_env) -> None:  # type: ignore[no-untyped-def]
    run(index_cli, "upsert", "-d", "demo")
    src = write_jsonl(tmp_path / "cands.jsonl", [
        {"user_id": "u-ana", "topk": 4, "results": [
            {"item_id": "tide-sushi", "score": 0.9}, {"item_id": "[PAD]", "score": 0.5},
            {"item_id": "crumb-and-co", "score": 0.4},
            {"item_id": "polar-scoop-gelato", "score": 0.1}]},
        {"user_id": "u-dev", "topk": 4, "results": [
            {"item_id": "ghost", "score": 0.9}, {"item_id": "noodle-harbor", "score": 0.2}]},
    ])
    out_path = tmp_path / "out" / "reranked.jsonl"
    err = run(query_cli, "rerank", "-d", "demo", "--candidates-file", str(src), "--out",
              str(out_path), ok=False).output
    assert f"{src}:2: field 'results[0].item_id'" in err
    assert not out_path.exists(), "no partial output on error"

    run(query_cli, "rerank", "-d", "demo", "--candidates-file", str(src), "--out",
        str(out_path), "--allow-unknown")
    rows = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["user_id"] for r in rows] == ["u-ana", "u-dev"]
    assert rows[0]["topk"] == 4, "other fields are kept"
    first = rows[0]["results"]
    assert len(first) == 4 and first[-1]["item_id"] == "[PAD]"
    assert {r["explanation"] for r in first[:3]} <= {"persona", "summary"}
    assert [r["explanation"] for r in rows[1]["results"]] == ["persona", "unscored"]


def test_malformed_candidates_file(tmp_path: Path, tiny_env) -> None:  # type: ignore[no-untyped-def]
    run(index_cli, "upsert", "-d", "demo")
    src = tmp_path / "c.jsonl"
    src.write_text('{"user_id": "u-ana", "results": []}\n{"user_id": \n')
    out = run(query_cli, "rerank", "-d", "demo", "--candidates-file", str(src), "--out",
              str(tmp_path / "o.jsonl"), ok=False).output
    assert f"{src}:2: malformed JSON" in out


@pytest.mark.system  # the bench measures its RSS rows in child processes
def test_bench_json_shape(tmp_path: Path) -> None:
    out = run(bench_cli, "query", "--personas", "500", "--n-candidates", "40", "--users", "20",
              "--batch-size", "10", "--dim", "16", "--rounds", "1", "--maxsim", "--json").stdout
    report = json.loads(out)
    rows = report["rows"]
    assert len(report["load_average"]["start"]) == 3 and report["load_average"]["cpus"] >= 1
    timed = [r for r in rows if not r["mode"].startswith(("build", "rss", "first"))]
    assert {(r["mode"], r["k"]) for r in timed} == {
        ("single", "all"), ("single cached", "all"), ("batch", "all"), ("single", 10),
        ("batch", 10), ("single maxsim", 10), ("batch maxsim", 10),
        ("user_id cold", "all"), ("user_id warm", "all")}
    for row in timed:
        assert row["personas"] == 500 and row["candidates"] == 40
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["numpy_p50_ms"] > 0 and row["cpu_ms"] > 0 and row["numpy_cpu_ms"] > 0
        assert isinstance(row["disturbed"], bool)
        assert row["disturbed"] or row["wall_over_cpu"] <= 1.5
    firsts = {r["mode"]: r for r in rows if r["mode"].startswith("first")}
    assert set(firsts) == {"first request (start)", "first request (reload)"}
    for row in firsts.values():
        assert row["first_ms"] > 0 and row["warm_p50_ms"] > 0 and row["bind_ms"] > 0
        assert row["idle_p50_ms"] > 0 and row["ratio_over_idle"] == pytest.approx(
            row["first_ms"] / row["idle_p50_ms"], rel=0.01, abs=0.01)
    builds = [r for r in rows if r["mode"].startswith("build")]
    assert {r["mode"] for r in builds} == {"build", "build maxsim"}
    assert all(r["points_per_s"] > 0 for r in builds)
    assert {r["mode"] for r in rows if r["mode"].startswith("rss")} == {"rss", "rss maxsim"}
    for rss in (r for r in rows if r["mode"].startswith("rss")):
        assert rss["rss_mb"] > 0 and rss["ratio_to_raw"] > 1  # 32 KB of vectors, an interpreter


def test_bench_modes_json_shape(tmp_path: Path) -> None:
    out = tmp_path / "modes.json"
    printed = run(bench_cli, "modes", "--personas", "1000", "--n-candidates", "20,40",
                  "--users", "4", "--dim", "16", "--rounds", "2", "--out", str(out),
                  "--json").stdout
    result = json.loads(printed)
    assert result == json.loads(out.read_text())
    assert result["setup"]["items"] == 200 and result["setup"]["history"] == 10
    variants = ["default", "default, no because", "interests (MaxSim)", "interests (personas)",
                "proportional"]
    assert [(r["candidates"], r["variant"]) for r in result["rows"]] == \
        [(c, v) for c in (20, 40) for v in variants]
    for row in result["rows"]:
        assert row["wall_ms"] > 0 and row["cpu_ms"] > 0
        low, high = row["wall_ratio_range"]
        assert low <= row["wall_ratio"] <= high
        if row["variant"] == "default":
            assert row["wall_ratio"] == row["cpu_ratio"] == 1.0


def test_help_explains_commands() -> None:
    assert "upsert" in run(index_cli, "--help").output
    assert "--candidates-file" in run(query_cli, "rerank", "--help").output


def test_rerank_says_because_and_takes_a_mode(tiny_env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("P4R_INDEX__MAXSIM", "true")
    run(index_cli, "upsert", "-d", "demo")
    cands = "green-fern-bistro,tide-sushi,polar-scoop-gelato,cafe-lumen"
    table = run(query_cli, "rerank", "-d", "demo", "-u", "u-chloe", "-c", cands).output
    assert table.count("because you liked ") == 4
    for mode, diversify in (("interests", "none"), ("default", "proportional")):
        ranked = json.loads(run(query_cli, "rerank", "-d", "demo", "-u", "u-chloe", "-c", cands,
                                "--mode", mode, "--diversify", diversify, "--json").stdout)
        assert all(set(r["because"]) == {"item_id", "timestamp", "weight"} for r in ranked)
    bad = run(query_cli, "rerank", "-d", "demo", "-u", "u-chloe", "-c", cands, "--mode",
              "attention", ok=False).output
    assert "'attention' is not one of 'default', 'interests'" in bad
