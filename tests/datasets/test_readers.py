"""Dataset readers: canonical and reference layouts, and every bad-input path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p4r.datasets import dataset_dir, load_dataset
from p4r.errors import InputError, NotFoundError
from tests.conftest import DEMO, YELP, require_shared, write_jsonl

PERSONA = {"persona_id": "P1", "name": "Night Owl", "description": "Eats late.",
           "rationale": "Open until 2am."}


def canonical(tmp_path: Path, personas: list[dict], reviews: list[dict] | None = None) -> Path:
    root = tmp_path / "ds"
    write_jsonl(root / "items.jsonl", [{"item_id": "a", "title": "A", "summary": "A diner."},
                                       {"item_id": "b", "title": "B", "summary": "A bar."}])
    write_jsonl(root / "personas.jsonl", personas)
    write_jsonl(root / "reviews.jsonl", reviews or [
        {"user_id": "u1", "item_id": "b", "timestamp": 20, "rating": 4, "text": "ok"},
        {"user_id": "u1", "item_id": "a", "timestamp": 10, "rating": 5, "text": "great"},
    ])
    return root


def test_demo_dataset_is_complete() -> None:
    data = load_dataset("demo", DEMO)
    assert data.layout == "canonical"
    assert len(data.items) == 12
    assert len(data.personas) == 11
    assert all(2 <= len(p) <= 5 for p in data.personas.values())
    assert data.users == {"u-ana", "u-ben", "u-chloe", "u-dev"}
    # every reviewed item exists and has a summary for the interaction template
    assert all(i.item_id in data.items and i.item_summary for i in data.interactions)


def test_canonical_sorts_interactions_by_time(tmp_path: Path) -> None:
    data = load_dataset("t", canonical(tmp_path, [{"item_id": "a", "personas": [PERSONA]}]))
    assert [i.item_id for i in data.interactions] == ["a", "b"]
    assert data.interactions[0].item_summary == "A diner."
    assert data.personas["a"][0].rationale == "Open until 2am."


def test_reference_layout_reads_the_real_sample() -> None:
    data = load_dataset("yelp", require_shared(YELP))
    assert data.layout == "reference"
    assert len(data.personas) == 50
    assert data.persona_count == sum(
        len(json.loads(line)["personas"])
        for line in (YELP / "3.5_persona_with_summary.jsonl").read_text().splitlines())
    assert len(data.users) == 50
    assert len(data.interactions) == 1591
    # 838 distinct history items carry summaries; all of them become summary points
    history_items = {i.item_id for i in data.interactions}
    assert len(history_items) == 838
    assert all(data.items[i].summary for i in history_items)
    first = data.interactions[0]
    assert isinstance(first.aspects, dict) and first.timestamp > 1e9


def test_reference_history_file_can_be_chosen() -> None:
    full = load_dataset("yelp", require_shared(YELP))
    loo = load_dataset("yelp", YELP, history_file="3.5_history_loo.jsonl")
    from collections import Counter

    full_counts = Counter(i.user_id for i in full.interactions)
    loo_counts = Counter(i.user_id for i in loo.interactions)
    assert set(full_counts) == set(loo_counts)
    assert all(loo_counts[u] < full_counts[u] for u in full_counts), "each user loses a target"
    with pytest.raises(NotFoundError, match="history file not found"):
        load_dataset("yelp", YELP, history_file="nope.jsonl")


@pytest.mark.parametrize(
    ("personas_text", "line", "field", "message"),
    [
        ('{"item_id": "a", "personas": [' + json.dumps(PERSONA) + "]}\n{not json\n", 2, None,
         "malformed JSON"),
        ('{"personas": [' + json.dumps(PERSONA) + "]}\n", 1, "item_id", "missing required"),
        ('{"item_id": "a", "personas": []}\n', 1, "personas", "empty persona list"),
        ('{"item_id": "a"}\n', 1, "personas", "missing required"),
        ('{"item_id": "a", "personas": [' + json.dumps({**PERSONA, "name": ""}) + "]}\n", 1,
         "personas[0].name", "missing required"),
        ('{"item_id": "a", "personas": [' + json.dumps(PERSONA) + ", " + json.dumps(PERSONA)
         + "]}\n", 1, "personas[1].persona_id", "duplicate persona id 'P1'"),
        ('{"item_id": "a", "personas": [' + json.dumps(PERSONA) + "]}\n"
         '{"item_id": "a", "personas": [' + json.dumps(PERSONA) + "]}\n", 2, "item_id",
         "duplicate item"),
    ],
)
def test_bad_personas_name_file_line_and_field(
    tmp_path: Path, personas_text: str, line: int, field: str | None, message: str
) -> None:
    root = canonical(tmp_path, [])
    (root / "personas.jsonl").write_text(personas_text, encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_dataset("t", root)
    err = info.value
    assert err.file == str(root / "personas.jsonl")
    assert err.line == line
    assert err.field == field
    assert message in str(err)
    assert str(err).startswith(f"{root / 'personas.jsonl'}:{line}")


def test_bad_review_timestamp_is_reported(tmp_path: Path) -> None:
    root = canonical(tmp_path, [{"item_id": "a", "personas": [PERSONA]}],
                     reviews=[{"user_id": "u", "item_id": "a", "timestamp": "yesterday"}])
    with pytest.raises(InputError, match=r"reviews.jsonl:1: field 'timestamp': unreadable"):
        load_dataset("t", root)


def test_missing_review_field(tmp_path: Path) -> None:
    root = canonical(tmp_path, [{"item_id": "a", "personas": [PERSONA]}],
                     reviews=[{"item_id": "a", "timestamp": 1}])
    with pytest.raises(InputError, match=r"reviews.jsonl:1: field 'user_id'"):
        load_dataset("t", root)


def test_unknown_dataset_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"unknown dataset 'nope'.*datasets/nope"):
        dataset_dir("nope", tmp_path)
    assert dataset_dir("demo", tmp_path) == DEMO
    own = tmp_path / "datasets" / "demo"
    own.mkdir(parents=True)
    assert dataset_dir("demo", tmp_path) == own, "a user's dataset folder wins over the package"
    with pytest.raises(NotFoundError, match="invalid dataset name"):
        dataset_dir("Bad Name", tmp_path)


def test_folder_without_personas_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="no personas found"):
        load_dataset("t", tmp_path / "empty")
