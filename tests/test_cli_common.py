"""The `p4r` command as a whole: its tree and help, one option name per idea (old spellings
still parse), and a closed stdout pipe (`p4r … | head`) that ends the command quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from p4r.cli import GROUPS, main
from p4r.cli.bench import main as bench_cli
from p4r.cli.common import BackendOption, friendly_errors
from p4r.cli.data import main as data_cli
from p4r.cli.evaluation import main as eval_cli
from p4r.cli.index import main as index_cli
from p4r.cli.query import main as query_cli
from p4r.cli.reason import main as reason_cli
from p4r.cli.train import main as train_cli
from p4r.store import backends

REPO = Path(__file__).resolve().parents[1]


def commands(group: click.Group, path: str = "p4r") -> Iterator[tuple[str, click.Command]]:
    """Every visible command under ``group``, groups included, with its command path."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if command.hidden:
            continue
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from commands(command, f"{path} {name}")


def shown_options(command: click.Command) -> dict[str, click.Option]:
    """Option spellings ``--help`` documents, each with its option."""
    ctx = click.Context(command)
    shown: dict[str, click.Option] = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if record is None:
            continue
        for spelling in record[0].replace(",", " ").split():
            if spelling.startswith("-"):
                shown[spelling] = param  # type: ignore[assignment]
    return shown


# -- the command tree and its help --------------------------------------------------------------
def test_help_lists_every_group_on_one_line() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:")[1].strip().splitlines()
    assert [line.split()[0] for line in listed] == list(GROUPS)
    for name in GROUPS:
        group = main.get_command(click.Context(main), name)
        assert isinstance(group, click.Group) and group.help, f"{name} explains itself"


def test_the_aliases_are_the_groups() -> None:
    ctx = click.Context(main)
    for alias, name in ((index_cli, "index"), (query_cli, "query"), (eval_cli, "eval"),
                        (train_cli, "train"), (reason_cli, "reason"), (data_cli, "data"),
                        (bench_cli, "bench")):
        assert main.get_command(ctx, name) is alias
    scripts = (REPO / "pyproject.toml").read_text()
    for line in ('p4r = "p4r.cli:main"', 'p4r-index = "p4r.cli.index:main"',
                 'p4r-query = "p4r.cli.query:main"', 'p4r-eval = "p4r.cli.evaluation:main"',
                 'p4r-train = "p4r.cli.train:main"', 'p4r-reason = "p4r.cli.reason:main"',
                 'p4r-data = "p4r.cli.data:main"'):
        assert line in scripts


# -- one name per idea ---------------------------------------------------------------------------
RETIRED = {"--topk", "--repeats", "--work", "--sizes"}


def test_one_name_per_idea() -> None:
    registered = tuple(entry.name for entry in backends())
    for path, command in commands(main):
        options = shown_options(command)
        assert not RETIRED & set(options), f"{path} documents a retired name"
        if "--out" in options:
            out_type = options["--out"].type
            assert isinstance(out_type, click.Path) and not out_type.dir_okay, \
                f"{path}: --out is a file, folders are --out-dir"
        if "--out-dir" in options:
            assert not options["--out-dir"].type.file_okay  # type: ignore[attr-defined]
        if "--backend" in options:
            backend = options["--backend"]
            assert isinstance(backend, BackendOption), f"{path}: the one --backend option"
            assert tuple(backend.type.choices) == registered  # type: ignore[attr-defined]
        if "--candidates" in options:
            assert options["--candidates"].type is click.STRING, \
                f"{path}: --candidates are item ids; a count is --n-candidates"
        if not isinstance(command, click.Group) and path != "p4r serve":
            assert "--json" in options, f"{path} reports, so it has --json"


def test_commands_without_a_store_do_not_offer_backend(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    stores = {"reason live"}  # re-embeds live interactions in the user state: it opens one
    for group in (reason_cli, train_cli, data_cli):
        for path, command in commands(group, group.name or ""):
            assert ("--backend" in shown_options(command)) == (path in stores), path
    # an old script that still passes it runs, with a note
    summary = reason_cli.commands["summary"]
    ctx = summary.make_context("summary", ["-d", "demo", "--backend", "edge"])
    assert "backend" not in ctx.params
    assert "--backend is ignored" in capsys.readouterr().err


def _parse(group: click.Group, name: str, args: list[str]) -> dict[str, Any]:
    command = group.commands[name] if name else group
    return command.make_context(name or "p4r", args, resilient_parsing=False).params


def test_old_spellings_still_parse(tmp_path: Path) -> None:
    f = tmp_path / "f.jsonl"
    f.write_text("")
    assert _parse(eval_cli, "candidates", ["-d", "demo", "--model", "bpr", "--topk", "7"])[
        "k"] == 7
    run = _parse(eval_cli, "run", ["-d", "demo", "--generator", "bpr", "--topk", "7",
                                   "--out", str(tmp_path)])
    assert (run["k"], run["out_dir"]) == (7, tmp_path)
    assert _parse(eval_cli, "metrics", ["--candidates", str(f), "--gt", str(f)])[
        "candidates_path"] == f
    assert _parse(eval_cli, "train-cv", ["-d", "demo", "--work", str(tmp_path)])[
        "work_dir"] == tmp_path
    assert _parse(train_cli, "", ["--out", str(tmp_path)])["out_dir"] == tmp_path
    assert _parse(data_cli, "prepare", ["-d", "x", "-s", str(f), "--out", str(tmp_path)])[
        "out_dir"] == tmp_path
    query = _parse(bench_cli, "query", ["--sizes", "500", "--candidates", "40", "--batch", "10"])
    assert (query["personas"], query["n_candidates"], query["batch_size"]) == ("500", "40", 10)
    assert _parse(bench_cli, "serve", ["-d", "demo", "--candidates", "5"])["n_candidates"] == 5
    latency = _parse(bench_cli, "latency", ["--repeats", "2", "--out", str(tmp_path)])
    assert (latency["rounds"], latency["out_dir"]) == (2, tmp_path)
    help_text = CliRunner().invoke(eval_cli, ["run", "--help"]).output
    assert "--k " in help_text and "--topk" not in help_text and "--out-dir" in help_text


def test_benchmarks_still_answer_at_their_old_places() -> None:
    for group, args in ((query_cli, ["bench", "--personas", "x"]),
                        (eval_cli, ["latency", "--personas", "1"]),
                        (train_cli, ["bench", "--steps", "0"])):
        result = CliRunner().invoke(group, args)
        assert result.exit_code == 2 and "Usage:" in result.output, result.output
        assert group.commands[args[0]].hidden


# -- broken pipes ----------------------------------------------------------------------------------
def test_an_error_on_another_pipe_is_still_an_error() -> None:
    @click.command()
    @friendly_errors
    def talks_to_a_server() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    result = CliRunner().invoke(talks_to_a_server, [])
    assert result.exit_code == 1 and result.output == "Error: Broken pipe\n"


@pytest.fixture(scope="module")
def indexed_env(tmp_path_factory: pytest.TempPathFactory,
                tiny_models: dict[str, Path]) -> dict[str, str]:
    """Environment of a data dir with the demo indexed by the tiny encoder."""
    data_dir = tmp_path_factory.mktemp("pipe-demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("P4R_")}
    env |= {"P4R_DATA_DIR": str(data_dir), "P4R_ENCODER__MODEL": str(tiny_models["a"]),
            "PYTHONPATH": str(REPO)}
    built = subprocess.run([sys.executable, "-m", "p4r.cli", "index", "upsert", "-d", "demo"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    return env


@pytest.mark.parametrize("args", [
    ["index", "status", "-d", "demo"],
    ["query", "rerank", "-d", "demo", "-u", "u-ana", "-c", "cafe-lumen,tide-sushi", "--json"],
    ["--help"],
], ids=["status", "rerank-json", "help"])
def test_a_closed_pipe_exits_quietly(indexed_env: dict[str, str], args: list[str]) -> None:
    """Like `p4r index status -d demo | head -0`: the reader is gone before the first write."""
    proc = subprocess.Popen([sys.executable, "-m", "p4r.cli", *args], env=indexed_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""


def test_head_reads_the_first_line(indexed_env: dict[str, str]) -> None:
    shell = (f"set -o pipefail; {sys.executable} -m p4r.cli query rerank -d demo -u u-ana "
             "-c cafe-lumen,tide-sushi --json | head -1")
    done = subprocess.run(["bash", "-c", shell], env=indexed_env, capture_output=True,
                          text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[\n", "")
