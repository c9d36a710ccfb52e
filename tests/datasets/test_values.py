"""Values that parse as JSON but would break later: each class fails in the reader, naming
file, line and field, or is read in one documented way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from p4r.datasets import load_dataset
from p4r.errors import InputError
from tests.conftest import YELP, require_shared, write_jsonl

PERSONA = {"persona_id": "P1", "name": "Night Owl", "description": "Eats late.",
           "rationale": "Open until 2am."}
REVIEW = {"user_id": "u1", "item_id": "a", "timestamp": 1_700_000_000, "rating": 4,
          "text": "ok"}


def canonical(root: Path, *, items: list[dict] | None = None, personas: list[dict] | None = None,
              reviews: list[dict] | None = None) -> Path:
    write_jsonl(root / "items.jsonl", items or [
        {"item_id": "a", "title": "A", "summary": "A diner.", "metadata": {"price": 2}},
        {"item_id": "b", "title": "B", "summary": "A bar."}])
    write_jsonl(root / "personas.jsonl", personas or [{"item_id": "a", "personas": [PERSONA]}])
    write_jsonl(root / "reviews.jsonl", reviews or [REVIEW])
    return root


def raw_line(root: Path, name: str, text: str) -> Path:
    """Replace a file's content with literal text (json.dumps would refuse some of it)."""
    (root / name).write_text(text, encoding="utf-8")
    return root / name


def reference_with(tmp_path: Path, name: str, line: int, path: tuple, value: object) -> Path:
    """A copy of the real reference sample with one value on one line replaced."""
    root = tmp_path / "ref"
    shutil.copytree(require_shared(YELP), root)
    lines = (root / name).read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[line - 1])
    target = row
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    lines[line - 1] = json.dumps(row)  # a float NaN becomes the bare NaN token
    (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def fails(root: Path, name: str, line: int, field: str | None, message: str) -> None:
    with pytest.raises(InputError) as info:
        load_dataset("t", root)
    err = info.value
    assert (err.file, err.line, err.field) == (str(root / name), line, field), str(err)
    assert message in str(err)


# -- class: numbers that are not finite ---------------------------------------------------------
@pytest.mark.parametrize(("review_text", "field"), [
    ('{"user_id": "u1", "item_id": "a", "timestamp": NaN}', "timestamp"),
    ('{"user_id": "u1", "item_id": "a", "timestamp": Infinity}', "timestamp"),
    ('{"user_id": "u1", "item_id": "a", "timestamp": -Infinity}', "timestamp"),
    ('{"user_id": "u1", "item_id": "a", "timestamp": 1e999}', "timestamp"),
    ('{"user_id": "u1", "item_id": "a", "timestamp": "NaN"}', "timestamp"),
    ('{"user_id": "u1", "item_id": "a", "timestamp": "inf"}', "timestamp"),
    ('{"user_id": "u1", "item_id": "a", "timestamp": 1, "rating": NaN}', "rating"),
    ('{"user_id": "u1", "item_id": "a", "timestamp": 1, "rating": "nan"}', "rating"),
    ('{"user_id": "u1", "item_id": "a", "timestamp": 1, "rating": -1e400}', "rating"),
    ('{"user_id": "u1", "item_id": "a", "timestamp": 1, "aspects": {"x": [1, NaN]}}',
     "aspects.x[1]"),
])
def test_non_finite_numbers_are_refused_with_their_field(tmp_path: Path, review_text: str,
                                                          field: str) -> None:
    root = canonical(tmp_path / "ds")
    raw_line(root, "reviews.jsonl", json.dumps(REVIEW) + "\n" + review_text + "\n")
    fails(root, "reviews.jsonl", 2, field, "finite number")


def test_non_finite_numbers_anywhere_in_the_reference_layout(tmp_path: Path) -> None:
    root = reference_with(tmp_path, "3.5_history.jsonl", 3, ("reviews", 1, "rating"),
                          float("nan"))
    fails(root, "3.5_history.jsonl", 3, "reviews[1].rating", "finite number")


# -- class: milliseconds mixed with seconds -----------------------------------------------------
def test_milliseconds_are_told_by_magnitude_and_keep_the_order(tmp_path: Path) -> None:
    root = canonical(tmp_path / "ds", reviews=[
        {**REVIEW, "item_id": "a", "timestamp": 1_700_000_300_000},   # ms, 5 minutes later
        {**REVIEW, "item_id": "b", "timestamp": 1_700_000_000},       # seconds
        {**REVIEW, "item_id": "a", "timestamp": "1700000600500"},     # ms as a string
    ])
    data = load_dataset("t", root)
    assert [(i.item_id, i.timestamp) for i in data.interactions] == [
        ("b", 1_700_000_000.0), ("a", 1_700_000_300.0), ("a", 1_700_000_600.5)]


def test_timestamps_beyond_milliseconds_are_refused(tmp_path: Path) -> None:
    root = canonical(tmp_path / "ds", reviews=[REVIEW, {**REVIEW, "timestamp": 1.7e15}])
    fails(root, "reviews.jsonl", 2, "timestamp", "expected unix seconds or milliseconds")


# -- class: text fields of the wrong type -------------------------------------------------------
WRONG_TEXT = [42, 4.5, True, {"oops": [1, 2]}, ["a", "b"]]


@pytest.mark.parametrize("value", WRONG_TEXT, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize(("name", "field"), [
    ("personas.jsonl", "personas[0].name"),
    ("personas.jsonl", "personas[0].description"),
    ("personas.jsonl", "personas[0].rationale"),
    ("items.jsonl", "title"),
    ("items.jsonl", "summary"),
    ("reviews.jsonl", "text"),
])
def test_text_fields_must_be_strings(tmp_path: Path, name: str, field: str,
                                     value: object) -> None:
    root = canonical(tmp_path / "ds")
    if name == "personas.jsonl":
        key = field.split(".")[1]
        write_jsonl(root / name, [{"item_id": "b", "personas": [PERSONA]},
                                  {"item_id": "a", "personas": [{**PERSONA, key: value}]}])
    elif name == "items.jsonl":
        write_jsonl(root / name, [{"item_id": "b"}, {"item_id": "a", field: value}])
    else:
        write_jsonl(root / name, [REVIEW, {**REVIEW, field: value}])
    fails(root, name, 2, field, "expected text (a string)")


@pytest.mark.parametrize(("name", "path", "field"), [
    ("3.5_persona_with_summary.jsonl", ("personas", 0, "Name"), "personas[0].Name"),
    ("3.5_persona_with_summary.jsonl", ("personas", 1, "Preference_Rationale"),
     "personas[1].Preference_Rationale"),
    ("2_summary.jsonl", ("item_summary",), "item_summary"),
    ("2_summary.jsonl", ("item_title",), "item_title"),
    ("3.5_history.jsonl", ("reviews", 0, "summary"), "reviews[0].summary"),
    ("3.5_history.jsonl", ("reviews", 2, "review_text"), "reviews[2].review_text"),
])
def test_reference_text_fields_must_be_strings(tmp_path: Path, name: str, path: tuple,
                                               field: str) -> None:
    root = reference_with(tmp_path, name, 2, path, {"oops": [1, 2]})
    fails(root, name, 2, field, "expected text (a string), got an object")


# -- class: the padding marker as a real item ---------------------------------------------------
@pytest.mark.parametrize(("name", "rows", "field"), [
    ("items.jsonl", [{"item_id": "[PAD]", "title": "pad"}], "item_id"),
    ("personas.jsonl", [{"item_id": "[PAD]", "personas": [PERSONA]}], "item_id"),
    ("reviews.jsonl", [{**REVIEW, "item_id": "[PAD]"}], "item_id"),
])
def test_pad_is_not_an_item_id_in_data_files(tmp_path: Path, name: str, rows: list[dict],
                                             field: str) -> None:
    root = canonical(tmp_path / "ds")
    with (root / name).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(rows[0]) + "\n")
    line = len((root / name).read_text().splitlines())
    fails(root, name, line, field, "'[PAD]' is not an item id")


def test_pad_is_not_an_item_id_in_a_reference_history(tmp_path: Path) -> None:
    root = reference_with(tmp_path, "3.5_history.jsonl", 1, ("reviews", 3, "item_id"),
                          "[PAD]")
    fails(root, "3.5_history.jsonl", 1, "reviews[3].item_id", "'[PAD]' is not an item id")
