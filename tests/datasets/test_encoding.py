"""Bytes that are not UTF-8 (and other unparsable lines) in any JSON-lines input: one
InputError naming file and line, from every reader, raw adapters included."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from p4r.datasets import load_dataset
from p4r.datasets.raw import open_source
from p4r.datasets.raw.yelp import BUSINESS_FILE, REVIEW_FILE
from p4r.errors import InputError
from p4r.evaluation.generators import read_cf_lines
from p4r.evaluation.io import read_ground_truth
from p4r.query.candidates import read_candidates
from tests.conftest import DEMO, YELP, require_shared, write_jsonl
from tests.datasets.test_raw_yelp import yelp_folder

BAD = b"caf\xe9"  # Latin-1 "café": the classic non-UTF-8 byte


def corrupt_line_2(path: Path) -> None:
    """Put a Latin-1 byte inside a string on the second line of ``path``."""
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 2, path
    if b'"' in lines[1]:
        lines[1] = lines[1].replace(b'"', b'"' + BAD, 1)
    else:  # plain text lines (``user item item``)
        lines[1] = lines[1].rstrip(b"\n") + b" " + BAD + b"\n"
    path.write_bytes(b"".join(lines))


def canonical_copy(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(DEMO, root)
    return root


def reference_copy(tmp_path: Path) -> Path:
    root = tmp_path / "ref"
    shutil.copytree(require_shared(YELP), root)
    return root


def _candidates(tmp_path: Path) -> tuple[Path, Callable[[Path], object]]:
    path = write_jsonl(tmp_path / "cands.jsonl", [
        {"user_id": "u1", "results": [{"item_id": "a"}, {"item_id": "[PAD]"}]},
        {"user_id": "u2", "results": [{"item_id": "b"}]}])
    return path, read_candidates


def _ground_truth(tmp_path: Path) -> tuple[Path, Callable[[Path], object]]:
    path = write_jsonl(tmp_path / "gt.jsonl", [{"user_id": "u1", "item_id": "a"},
                                               {"user_id": "u2", "item_id": "b"}])
    return path, read_ground_truth


def _cf_lines(tmp_path: Path) -> tuple[Path, Callable[[Path], object]]:
    path = tmp_path / "train.txt"
    path.write_text("u1 i1 i2\nu2 i3\n", encoding="utf-8")
    return path, read_cf_lines


def _dataset_file(layout: Callable[[Path], Path], name: str, history: str | None = None):  # type: ignore[no-untyped-def]
    def make(tmp_path: Path) -> tuple[Path, Callable[[Path], object]]:
        root = layout(tmp_path)
        return root / name, lambda _p: load_dataset("t", root, history_file=history)
    return make


def _yelp(name: str):  # type: ignore[no-untyped-def]
    def make(tmp_path: Path) -> tuple[Path, Callable[[Path], object]]:
        root = yelp_folder(tmp_path / "yelp")
        return root / name, lambda _p: list(open_source(root).reviews())
    return make


INPUTS = {
    "items.jsonl": _dataset_file(canonical_copy, "items.jsonl"),
    "personas.jsonl": _dataset_file(canonical_copy, "personas.jsonl"),
    "reviews.jsonl": _dataset_file(canonical_copy, "reviews.jsonl"),
    "2_summary.jsonl": _dataset_file(reference_copy, "2_summary.jsonl"),
    "3.5_persona_with_summary.jsonl": _dataset_file(reference_copy,
                                                    "3.5_persona_with_summary.jsonl"),
    "3.5_history.jsonl": _dataset_file(reference_copy, "3.5_history.jsonl"),
    "3.5_history_loo.jsonl": _dataset_file(reference_copy, "3.5_history_loo.jsonl",
                                           history="3.5_history_loo.jsonl"),
    "candidates": _candidates,
    "ground truth": _ground_truth,
    "collaborative-filtering split": _cf_lines,
    "yelp business": _yelp(BUSINESS_FILE),
    "yelp review": _yelp(REVIEW_FILE),
}


@pytest.mark.parametrize("which", list(INPUTS))
def test_invalid_utf8_names_file_and_line(tmp_path: Path, which: str) -> None:
    path, read = INPUTS[which](tmp_path)
    corrupt_line_2(path)
    with pytest.raises(InputError) as info:
        read(path)
    assert (info.value.file, info.value.line) == (str(path), 2)
    assert "not UTF-8 text (byte 0xe9" in str(info.value)
    assert str(info.value).startswith(f"{path}:2: ")


@pytest.mark.parametrize(("text", "message"), [
    ('{"user_id": "u1", "item_id": 1' + "0" * 5000 + "}", "malformed JSON (Exceeds the limit"),
    ('{"user_id": "u1", "item_id": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "malformed JSON (nested too deeply)"),
    ('["u1", "a"]', "expected a JSON object, got a list"),
])
def test_unparsable_lines_are_input_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gt.jsonl"
    path.write_text('{"user_id": "u0", "item_id": "a"}\n' + text + "\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_ground_truth(path)
    assert str(info.value).startswith(f"{path}:2: {message}")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "gt.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"user_id": "u1", "item_id": "a"}\n')
    assert read_ground_truth(path) == {"u1": {"a"}}
