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
    paths = runner.invoke(main, ["bench", "serve", "-d", "demo", "--paths", "lean,fast"])
    assert paths.exit_code == 2 and "give some of lean, alone, nopoll, framework" in paths.output


@pytest.mark.system  # the bench starts `p4r serve` processes
def test_bench_reports_http_beside_in_process(demo_settings: Settings,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the bench's server processes import p4r
    result = CliRunner().invoke(main, ["bench", "serve", "-d", "demo", "--workers", "1",
                                       "--clients", "1,4", "--duration", "0.5", "--rounds",
                                       "2", "--paths", "lean,alone,framework", "--json"],
                            catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["answers_match"] is True  # every path answers what the library does
    modes = [(r["mode"], r.get("path"), r["workers"], r["clients"]) for r in report["rows"]]
    assert modes == [("in-process", None, None, 1), ("http", "lean", 1, 1),
                     ("http", "alone", 1, 1), ("http", "framework", 1, 1),
                     ("http", "lean", 1, 4), ("http", "alone", 1, 4),
                     ("http", "framework", 1, 4)]
    assert [(r["workers"], r["clients"]) for r in report["ratios"]] == [(1, 1), (1, 4)]
    for ratios in report["ratios"]:  # per-round ratios: their median lies in their range
        for name in ("lean_rps_over_framework", "lean_cpu_over_framework",
                     "lean_rps_over_alone", "lean_cpu_over_alone",
                     "lean_cpu_over_in_process", "framework_cpu_over_in_process"):
            low, high = ratios[f"{name}_range"]
            assert 0 < low <= ratios[name] <= high, name
    for row in report["rows"]:
        assert row["errors"] == 0
        assert row["requests"] > 10 and row["rps"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["cpu_ms"] > 0, "CPU per request: the caller's, or the server's over HTTP"
    assert len(report["load_average"]["start"]) == 3
    assert [(m["path"], m["workers"]) for m in report["server_rss"]] == [
        ("lean", 1), ("alone", 1), ("framework", 1)]
    assert all(mb > 10 for m in report["server_rss"] for mb in m["rss_mb"].values())
    http = report["rows"][1]
    assert http["requests"] > 20 and report["rounds"] == 2
    assert http["p50_ms"] > report["rows"][0]["p50_ms"]  # HTTP cannot beat the call it wraps
    assert report["target"]["overhead_ms"] == pytest.approx(
        http["p50_ms"] - report["rows"][0]["p50_ms"], abs=1e-3)


def test_serve_refuses_to_listen_beyond_loopback_without_a_key(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("P4R_SERVE__DATASET", "")  # restored after: the command exports it
    runner = CliRunner()
    refused = runner.invoke(main, ["serve", "-d", "demo", "--host", "0.0.0.0"])
    assert refused.exit_code == 1
    assert refused.output == ("Error: refusing to listen on 0.0.0.0 with no API key: set "
                              "P4R_SERVE__API_KEY (and P4R_SERVE__READ_ONLY_API_KEY for "
                              "readers), or pass --insecure\n")
    cert = tmp_path / "cert.pem"
    cert.write_text("not used")
    half = runner.invoke(main, ["serve", "-d", "demo", "--ssl-certfile", str(cert)])
    assert half.exit_code == 2 and "give --ssl-certfile and --ssl-keyfile together" in (
        half.output)
    monkeypatch.setenv("P4R_SERVE__API_KEY_FILE", str(tmp_path / "missing"))
    bad_key = runner.invoke(main, ["serve", "-d", "demo"])
    assert bad_key.exit_code == 1
    assert bad_key.output.startswith("Error: cannot read P4R_SERVE__API_KEY_FILE=")


def test_exposure_rules() -> None:
    from pydantic import SecretStr

    from p4r.errors import ConfigError
    from p4r.serve.runner import check_exposure, is_loopback
    from p4r.settings import ServeSettings

    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.8.9.1"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "10.0.0.5", "api.example"))
    assert check_exposure("127.0.0.1", ServeSettings()) == []
    with pytest.raises(ConfigError, match="or pass --insecure"):
        check_exposure("0.0.0.0", ServeSettings())
    insecure = check_exposure("0.0.0.0", ServeSettings(), insecure=True)
    assert any("P4R_SERVE__TRUSTED_HOSTS" in w for w in insecure)
    assert any("no API key (--insecure)" in w for w in insecure)
    keyed = ServeSettings(api_key=SecretStr("k" * 20), trusted_hosts=["api.example"])
    assert check_exposure("0.0.0.0", keyed) == []
