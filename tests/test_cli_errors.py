"""Bad input through every console script: one ``Error:`` line that says what and where, no
traceback, nothing half-written, and no secret echoed back."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from p4r.cli.bench import main as bench_cli
from p4r.cli.data import main as data_cli
from p4r.cli.evaluation import main as eval_cli
from p4r.cli.index import main as index_cli
from p4r.cli.query import main as query_cli
from p4r.cli.reason import main as reason_cli
from p4r.cli.train import main as train_cli
from tests.conftest import DEMO, SHARED, YELP, require_shared, write_jsonl

BEAUTY = SHARED / "amazon-2018-all-beauty" / "All_Beauty_5.json.gz"


def invoke(cli: click.BaseCommand, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_error_line(result: Result) -> str:
    """The run failed with exactly one line on stderr, starting with ``Error:``."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def _indexed_demo(tmp_path_factory: pytest.TempPathFactory,
                  tiny_models: dict[str, Path]) -> Path:
    """The demo indexed once with the tiny encoder; the tests using it only read it."""
    data_dir = tmp_path_factory.mktemp("indexed-demo")
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("P4R_")]:
            patch.delenv(key)
        patch.chdir(data_dir)
        patch.setenv("P4R_DATA_DIR", str(data_dir))
        patch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
        result = invoke(index_cli, "upsert", "-d", "demo")
    assert result.exit_code == 0, result.output
    return data_dir


@pytest.fixture
def tiny_env(_indexed_demo: Path, tiny_models: dict[str, Path],
             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_DATA_DIR", str(_indexed_demo))
    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))


# -- class: settings that cannot be read, for every command that reads them -----------------
EVERY_COMMAND = [
    (index_cli, ["config"]),
    (index_cli, ["config", "--json"]),
    (index_cli, ["upsert", "-d", "demo"]),
    (index_cli, ["status", "-d", "demo"]),
    (index_cli, ["migrate"]),
    (index_cli, ["prune", "-d", "demo", "--yes"]),
    (index_cli, ["drop", "-d", "demo", "--yes"]),
    (index_cli, ["check", "-d", "demo"]),
    (query_cli, ["rerank", "-d", "demo", "-u", "u-ana", "-c", "tide-sushi"]),
    (reason_cli, ["summary", "-d", "demo"]),
    (reason_cli, ["all", "-d", "demo"]),
    (reason_cli, ["plan", "-d", "demo"]),
    (train_cli, ["-d", "demo"]),
    (bench_cli, ["train"]),
    (eval_cli, ["candidates", "-d", "demo", "--model", "bpr"]),
    (eval_cli, ["run", "-d", "demo", "--generator", "bpr"]),
    (eval_cli, ["loo-check", "--data-dir", str(YELP)]),
    (data_cli, ["prepare", "-d", "beauty", "--source", str(BEAUTY)]),
]
BAD_SETTINGS = {
    "list that is not JSON": ("P4R_TRAIN__TARGET_MODULES", '["query"',
                              "Error: invalid setting P4R_TRAIN__TARGET_MODULES="),
    "nested model that is not JSON": ("P4R_LLM", "gpt", "Error: invalid setting P4R_LLM: "),
    "data dir is a file": ("P4R_DATA_DIR", "{file}", "Error: invalid setting P4R_DATA_DIR="),
}


@pytest.mark.parametrize("bad", list(BAD_SETTINGS))
@pytest.mark.parametrize(("cli", "args"), EVERY_COMMAND,
                         ids=[f"{c.name}-{a[0]}" for c, a in EVERY_COMMAND])
def test_every_command_reports_an_unreadable_setting_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: click.BaseCommand,
        args: list[str], bad: str) -> None:
    if cli is data_cli:
        require_shared(BEAUTY)
    if args[0] == "loo-check":  # its --data-dir must exist
        require_shared(YELP)
    variable, value, expected = BAD_SETTINGS[bad]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(variable, value.format(file=blocker))
    assert one_error_line(invoke(cli, *args)).startswith(expected)


def test_the_documented_comma_list_works_in_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_TRAIN__TARGET_MODULES", "query,value")
    result = invoke(index_cli, "config")
    assert result.exit_code == 0, result.output
    assert "P4R_TRAIN__TARGET_MODULES=query,value" in result.stdout.splitlines()
    data = json.loads(invoke(index_cli, "config", "--json").stdout)
    assert data["train"]["target_modules"] == ["query", "value"]


# -- class: values that would break the store after other collections were written -----------
def test_a_nan_timestamp_stops_upsert_before_anything_is_written(tmp_path: Path) -> None:
    data = tmp_path / "mine"
    shutil.copytree(DEMO, data)
    lines = (data / "reviews.jsonl").read_text().splitlines()
    row = json.loads(lines[4])
    row["timestamp"] = float("nan")
    lines[4] = json.dumps(row)  # the bare NaN token Python's json writes
    (data / "reviews.jsonl").write_text("\n".join(lines) + "\n")
    line = one_error_line(invoke(index_cli, "upsert", "-d", "mine", "--data-dir", str(data)))
    assert line == (f"Error: {data / 'reviews.jsonl'}:5: field 'timestamp': not a finite "
                    f"number (NaN and Infinity are not valid JSON)")
    status = invoke(index_cli, "status", "-d", "mine")
    assert "not indexed" in status.output, "no version, no half-written collection"


# -- class: candidate files and their notes ---------------------------------------------------
def test_unknown_users_name_their_lines_and_nothing_is_written(tmp_path: Path,
                                                               tiny_env: None) -> None:
    src = write_jsonl(tmp_path / "cands.jsonl", [
        {"user_id": "u-ana", "results": [{"item_id": "tide-sushi"}]},
        {"user_id": "ghost-1", "results": [{"item_id": "tide-sushi"}]},
        {"user_id": "u-ben", "results": [{"item_id": "cafe-lumen"}]},
        {"user_id": "ghost-2", "results": [{"item_id": "cafe-lumen"}]},
    ])
    out = tmp_path / "out.jsonl"
    line = one_error_line(invoke(query_cli, "rerank", "-d", "demo", "--candidates-file",
                                 str(src), "--out", str(out)))
    assert line == (f"Error: {src}:2: field 'user_id': user 'ghost-1' has no interactions in "
                    f"dataset 'demo' (2 lines have unknown users, at lines 2, 4)")
    assert not out.exists()


def test_a_note_about_many_unknown_candidates_stays_short(tmp_path: Path,
                                                          tiny_env: None) -> None:
    ghosts = [f"ghost-{n}" for n in range(10_000)]
    single = invoke(query_cli, "rerank", "-d", "demo", "-u", "u-ana", "-c",
                    ",".join(["tide-sushi", *ghosts]), "--allow-unknown", "--json")
    assert single.exit_code == 0, single.output
    assert single.stderr.strip() == ("note: 10000 unknown candidate(s) kept unscored: "
                                     "ghost-0, ghost-1, ghost-2, ghost-3, ghost-4 … and 9,995 "
                                     "more")
    src = write_jsonl(tmp_path / "cands.jsonl", [
        {"user_id": "u-ana", "results": [{"item_id": g} for g in ["tide-sushi", *ghosts]]}])
    out = tmp_path / "out.jsonl"
    in_file = invoke(query_cli, "rerank", "-d", "demo", "--candidates-file", str(src),
                     "--out", str(out), "--allow-unknown")
    assert in_file.exit_code == 0, in_file.output
    assert "ghost-4 … and 9,995 more" in in_file.stderr and len(in_file.stderr) < 200
    assert len(json.loads(out.read_text())["results"]) == 10_001, "nothing dropped"


# -- class: credentials inside URLs -------------------------------------------------------------
def test_url_credentials_never_reach_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_QDRANT__URL", "http://admin:hunter2@127.0.0.1:9")
    monkeypatch.setenv("P4R_QDRANT__TIMEOUT", "2")
    monkeypatch.setenv("P4R_LLM__BASE_URL", "http://me:s3cret@127.0.0.1:9/v1")
    shown = invoke(index_cli, "config").stdout + invoke(index_cli, "config", "--json").stdout
    assert "P4R_QDRANT__URL=http://***@127.0.0.1:9" in shown
    assert "P4R_LLM__BASE_URL=http://***@127.0.0.1:9/v1" in shown
    line = one_error_line(invoke(index_cli, "status", "-d", "demo", "--backend", "server"))
    assert line.startswith("Error: cannot reach Qdrant at http://***@127.0.0.1:9 ")
    assert "hunter2" not in shown + line and "s3cret" not in shown + line


# -- class (found by the sweep): paths the command cannot write -------------------------------
def test_an_unwritable_output_path_is_one_line(tmp_path: Path, tiny_env: None) -> None:
    src = write_jsonl(tmp_path / "cands.jsonl", [
        {"user_id": "u-ana", "results": [{"item_id": "tide-sushi"}]}])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = one_error_line(invoke(query_cli, "rerank", "-d", "demo", "--candidates-file",
                                 str(src), "--out", str(blocker / "out.jsonl")))
    assert line.startswith(f"Error: {blocker}: ")
    assert "a file is where a folder is needed" in line


@pytest.mark.parametrize(("args", "message"), [
    (["query", "--personas", "x"], "is not a comma-separated list of whole numbers"),
    (["query", "--personas", "0"], "every value must be at least 1"),
    (["query", "--personas", "50", "--n-candidates", "20"],
     "20 candidates need at least 20 items"),
    (["query", "--users", "20"], "20 users make no call of 100"),
])
def test_bench_arguments_are_checked_before_building(args: list[str], message: str) -> None:
    result = CliRunner().invoke(bench_cli, args)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_options_that_cannot_apply_are_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    bad_name = runner.invoke(index_cli, ["check", "-d", "BAD!"])
    assert bad_name.exit_code == 2 and "invalid dataset name 'BAD!'" in bad_name.output
    canonical = runner.invoke(index_cli, ["upsert", "-d", "demo", "--data-dir", str(DEMO),
                                          "--history-file", "3.5_history_loo.jsonl"])
    assert canonical.exit_code == 1
    assert "--history-file applies only to the Persona4Rec reference files" in canonical.output
