"""Files that are too big, not files, or not valid Unicode: one line naming file, line, field.

Each class is refused by the one line reader every file goes through (canonical, reference,
candidate files, raw dumps), before anything is built.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from p4r.datasets import dataset_dir, load_dataset
from p4r.datasets.jsonl import read_jsonl
from p4r.datasets.raw.common import iter_json_lines
from p4r.errors import InputError, NotFoundError
from p4r.settings import FileLimits, load_settings
from tests.conftest import SHARED, YELP, require_shared, write_jsonl

PERSONA = {"persona_id": "P1", "name": "Night Owl", "description": "Eats late.",
           "rationale": "Open until 2am."}
REVIEW = {"user_id": "u1", "item_id": "a", "timestamp": 1_700_000_000, "text": "ok"}


def canonical(root: Path) -> Path:
    write_jsonl(root / "items.jsonl", [{"item_id": "a", "title": "A", "summary": "A diner."}])
    write_jsonl(root / "personas.jsonl", [{"item_id": "a", "personas": [PERSONA]}])
    write_jsonl(root / "reviews.jsonl", [REVIEW])
    return root


def refused(root: Path, name: str, line: int | None, field: str | None) -> InputError:
    with pytest.raises(InputError) as info:
        load_dataset("t", root)
    err = info.value
    assert (err.file, err.line, err.field) == (str(root / name), line, field), str(err)
    assert "\n" not in str(err), "one line"
    str(err).encode("utf-8")  # printable whatever the input held
    return err


# -- class: a text field longer than the limit --------------------------------------------------
def test_a_long_text_field_names_file_line_and_field(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_FILES__MAX_TEXT_CHARS", "1000")
    root = canonical(tmp_path / "ds")
    write_jsonl(root / "reviews.jsonl", [{**REVIEW, "text": "é" * 1000},  # at the limit: fine
                                         {**REVIEW, "item_id": "a", "text": "x" * 1001}])
    err = refused(root, "reviews.jsonl", 2, "text")
    assert "text of 1,001 characters is longer than the limit of 1,000" in str(err)
    assert "P4R_FILES__MAX_TEXT_CHARS" in str(err)


def test_a_long_nested_field_is_named_by_its_path(tmp_path: Path) -> None:
    root = canonical(tmp_path / "ds")
    write_jsonl(root / "personas.jsonl", [{"item_id": "a", "personas": [
        PERSONA, {**PERSONA, "persona_id": "P2", "description": "d" * 50}]}])
    with pytest.raises(InputError) as info:
        list(read_jsonl(root / "personas.jsonl", FileLimits(max_text_chars=40)))
    assert (info.value.line, info.value.field) == (1, "personas[1].description")


# -- class: a record too big to hold in memory --------------------------------------------------
def test_a_1gb_record_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    root = canonical(tmp_path / "ds")
    path = root / "items.jsonl"
    with path.open("wb") as handle:  # sparse: 1 GiB of file, almost no disk
        handle.write(b'{"item_id": "a", "title": "A"}\n{"item_id": "b", "description": "')
        handle.seek(1 << 30)
        handle.write(b'"}\n')
    limit = load_settings().files.max_line_bytes
    tracemalloc.start()
    try:
        err = refused(root, "items.jsonl", 2, None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"line is longer than {limit:,} bytes (P4R_FILES__MAX_LINE_BYTES)" in str(err)
    assert peak < 3 * limit, f"peak {peak:,} bytes for a {limit:,}-byte line limit"


def test_the_line_limit_applies_to_raw_dumps_too(tmp_path: Path) -> None:
    dump = tmp_path / "reviews.json.gz"
    with gzip.open(dump, "wt") as handle:
        handle.write('{"a": 1}\n' + json.dumps({"text": "x" * 5000}) + "\n")
    with pytest.raises(InputError) as info:
        list(iter_json_lines(dump, limits=FileLimits(max_line_bytes=4096)))
    assert (info.value.file, info.value.line) == (str(dump), 2)


def test_the_real_data_fits_the_default_limits() -> None:
    """Every JSON-lines file of ../shared/data reads with the defaults (the longest line is
    394,009 bytes, the longest text 5,214 characters; see FileLimits)."""
    defaults = FileLimits()
    files = sorted(require_shared(YELP).glob("*.jsonl"))
    for path in files:
        assert sum(1 for _ in read_jsonl(path, defaults)) > 0
    beauty = require_shared(SHARED / "amazon-2018-all-beauty" / "All_Beauty_5.json.gz")
    assert sum(1 for _ in iter_json_lines(beauty, limits=defaults)) == 5269


# -- class: not a regular file ------------------------------------------------------------------
def _load_in_thread(root: Path) -> BaseException | None:
    """Load with a deadline: a FIFO must be refused at once, never waited on."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            load_dataset("t", root)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert outcome, "the reader hung"
    return outcome[0]


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: os.mkfifo(p), "a FIFO (named pipe), not a regular file"),
    (lambda p: p.symlink_to("/dev/zero"), "a character device, not a regular file"),
    (lambda p: p.mkdir(), "a folder, not a regular file"),
    (lambda p: p.symlink_to(p), "a symlink loop (too many levels of symbolic links)"),
], ids=["fifo", "device", "folder", "symlink-loop"])
def test_non_regular_files_are_refused_naming_the_path(tmp_path: Path, make,  # type: ignore[no-untyped-def]
                                                       says: str) -> None:
    root = canonical(tmp_path / "ds")
    (root / "reviews.jsonl").unlink()
    make(root / "reviews.jsonl")
    err = _load_in_thread(root)
    assert isinstance(err, InputError), err
    assert str(err) == f"{root / 'reviews.jsonl'}: {says}" + (
        "; p4r reads data only from regular files" if "not a regular" in says else "")


def test_a_fifo_in_a_raw_dump_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "review.json")
    with pytest.raises(InputError, match="a FIFO"):
        list(iter_json_lines(tmp_path / "review.json"))


def test_a_looping_personas_file_says_so_not_no_personas_found(tmp_path: Path) -> None:
    root = canonical(tmp_path / "ds")
    (root / "personas.jsonl").unlink()
    (root / "personas.jsonl").symlink_to(root / "personas.jsonl")
    err = refused(root, "personas.jsonl", None, None)
    assert "symlink loop" in str(err)


def test_a_broken_symlink_is_named(tmp_path: Path) -> None:
    root = canonical(tmp_path / "ds")
    (root / "items.jsonl").unlink()
    (root / "items.jsonl").symlink_to(tmp_path / "gone.jsonl")
    with pytest.raises(NotFoundError, match=r"items\.jsonl: a broken symlink"):
        load_dataset("t", root)


def test_a_looping_dataset_folder_says_so(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(NotFoundError, match="is a symlink loop, not a folder"):
        dataset_dir("t", tmp_path, loop)


# -- class: text that is not valid Unicode (a lone surrogate) ----------------------------------
@pytest.mark.parametrize(("line", "field"), [
    ('{"user_id": "\\ud800", "item_id": "a", "timestamp": 1}', "user_id"),
    ('{"user_id": "u1", "item_id": "a\\udfff", "timestamp": 1}', "item_id"),
    ('{"user_id": "u1", "item_id": "a", "timestamp": 1, "text": "ok \\ud83d"}', "text"),
    ('{"user_id": "u1", "item_id": "a", "timestamp": 1, "aspects": {"x": ["\\udc00"]}}',
     "aspects.x[0]"),
], ids=["user_id", "item_id", "text", "aspects"])
def test_lone_surrogates_are_refused_naming_the_field(tmp_path: Path, line: str,
                                                      field: str) -> None:
    root = canonical(tmp_path / "ds")
    (root / "reviews.jsonl").write_text(json.dumps(REVIEW) + "\n" + line + "\n")
    err = refused(root, "reviews.jsonl", 2, field)
    assert "a lone surrogate" in str(err) and "not valid Unicode" in str(err)


def test_surrogate_pairs_are_ordinary_text(tmp_path: Path) -> None:
    root = canonical(tmp_path / "ds")
    (root / "reviews.jsonl").write_text(
        '{"user_id": "u1", "item_id": "a", "timestamp": 1, "text": "ok \\ud83d\\ude00"}\n')
    assert load_dataset("t", root).interactions[0].text == "ok \U0001f600"


def test_a_too_long_id_is_refused(tmp_path: Path) -> None:
    root = canonical(tmp_path / "ds")
    write_jsonl(root / "reviews.jsonl", [{**REVIEW, "user_id": "u" * 513}])
    err = refused(root, "reviews.jsonl", 1, "user_id")
    assert "an id of 513 characters is longer than the limit of 512" in str(err)
