"""`p4r serve` and `p4r bench serve` as commands: real uvicorn processes on loopback."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from p4r.cli import main
from p4r.settings import Settings
from tests.serve.conftest import REPO


def test_serve_needs_a_dataset_and_options_in_their_place() -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["serve"])
    assert missing.exit_code == 2 and "give --dataset NAME" in missing.output
    misplaced = runner.invoke(main, ["serve", "--port", "9", "bench", "-d", "demo"])
    assert misplaced.exit_code == 2 and "put the options after 'bench'" in misplaced.output
    bad = runner.invoke(main, ["serve", "-d", "../etc"])
    assert bad.exit_code == 1 and bad.output.startswith("Error: ")


@pytest.mark.system  # the bench starts `p4r serve` processes
def test_bench_reports_http_beside_in_process(demo_settings: Settings,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the bench's server processes import p4r
    result = CliRunner().invoke(main, ["bench", "serve", "-d", "demo", "--workers", "1",
                                       "--clients", "1,4", "--duration", "0.5", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["answers_match"] is True
    modes = [(r["mode"], r["workers"], r["clients"]) for r in report["rows"]]
    assert modes == [("in-process", None, 1), ("http", 1, 1), ("http", 1, 4)]
    for row in report["rows"]:
        assert row["errors"] == 0
        assert row["requests"] > 10 and row["rps"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["cpu_ms"] > 0, "CPU per request: the caller's, or the server's over HTTP"
    assert len(report["load_average"]["start"]) == 3
    http = report["rows"][1]
    assert http["p50_ms"] > report["rows"][0]["p50_ms"]  # HTTP cannot beat the call it wraps
    assert report["target"]["overhead_ms"] == pytest.approx(
        http["p50_ms"] - report["rows"][0]["p50_ms"], abs=1e-3)
