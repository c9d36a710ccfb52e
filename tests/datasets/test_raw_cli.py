"""``p4r-data prepare`` through Click's runner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from p4r.cli.data import main
from tests.datasets.test_raw_yelp import REVIEW_FILE, yelp_folder


def run(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert (result.exit_code == 0) is ok, result.output
    return result


def test_prepare_into_the_data_dir(tmp_path: Path, isolated_env: Path) -> None:
    source = yelp_folder(tmp_path / "yelp")
    out = run("prepare", "--dataset", "philly", "--source", str(source), "--kcore", "0").output
    folder = isolated_env / "datasets" / "philly"
    assert out.strip() == (f"philly (yelp): 2 items, 3 users, 5 interactions (1 duplicates, "
                           f"0 dropped by 0-core) → {folder}")
    assert sorted(p.name for p in folder.iterdir()) == ["items.jsonl", "prepare.json",
                                                        "reviews.jsonl", "split"]
    manifest = json.loads((folder / "prepare.json").read_text())
    assert manifest["options"]["categories"] == ["Restaurants", "Food"]

    data = json.loads(run("prepare", "-d", "all", "-s", str(source), "--city", "",
                          "--state", "", "--categories", "", "--kcore", "0",
                          "--max-interactions", "4", "--seed", "1", "--json").stdout)
    assert data["kind"] == "yelp"
    assert data["folder"] == str(isolated_env / "datasets" / "all")
    assert data["interactions"] <= 4 and data["dropped_by_subsample"] > 0
    assert {"items", "users", "interactions", "dropped_by_kcore", "files"} <= set(data)


def test_prepare_with_out_and_categories(tmp_path: Path) -> None:
    source = yelp_folder(tmp_path / "yelp")
    out = run("prepare", "-d", "shops", "-s", str(source / REVIEW_FILE), "--kind", "yelp",
              "--categories", "Gifts,Diners", "--categories", "Nothing", "--kcore", "0",
              "--out-dir", str(tmp_path / "here")).output
    assert "2 items" in out and (tmp_path / "here" / "items.jsonl").exists()


def test_errors_are_one_line(tmp_path: Path) -> None:
    source = yelp_folder(tmp_path / "yelp")
    (source / REVIEW_FILE).write_text('{"user_id": \n')
    result = run("prepare", "-d", "philly", "-s", str(source), ok=False)
    assert result.exit_code == 1
    assert f"Error: {source / REVIEW_FILE}:1: malformed JSON" in result.output
    bad_name = run("prepare", "-d", "Bad Name", "-s", str(source), ok=False)
    assert "invalid dataset name" in bad_name.output
    assert "Usage" in run("prepare", "-d", "x", "-s", str(source), "--kcore", "-1",
                          ok=False).output
    assert "prepare" in run("-h").output
