"""Amazon Reviews 2023 adapter on tiny synthetic review and metadata files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from p4r.datasets.prepare import prepare_dataset
from p4r.datasets.raw import detect_kind
from p4r.datasets.raw.amazon import find_meta
from p4r.errors import ConfigError, InputError
from tests.conftest import write_jsonl

META = [
    {"main_category": "All Beauty", "title": "Rose Face Mist", "average_rating": 4.4,
     "rating_number": 120, "features": ["Alcohol free"], "description": ["A light mist."],
     "price": 12.5, "images": [{"large": "https://example.invalid/x.jpg"}], "store": "Petal",
     "categories": ["Beauty", "Skin Care"], "details": {"Item Form": "Spray"},
     "parent_asin": "P-MIST", "bought_together": None},
    {"main_category": "All Beauty", "title": "Clay Mask", "average_rating": 3.9,
     "rating_number": 40, "features": [], "description": [], "price": None, "store": "Terra",
     "categories": [], "details": {}, "parent_asin": "P-MASK"},
    {"main_category": "Tools & Home Improvement", "title": "Hammer", "categories": ["Tools"],
     "parent_asin": "P-HAMMER"},
]


def review(user: str, item: str, ms: int, *, rating: float = 5.0, parent: bool = True) -> dict:
    row = {"rating": rating, "title": f"{user} on {item}", "text": f"text {user} {item}",
           "images": [], "asin": f"{item}-variant", "user_id": user, "timestamp": ms,
           "helpful_vote": 0, "verified_purchase": True}
    if parent:
        row["parent_asin"] = item
    return row


REVIEWS = [
    review("u1", "P-MIST", 1588687728923),
    review("u1", "P-MASK", 1588687800000, rating=3.0),
    review("u1", "P-HAMMER", 1588687900000),
    review("u2", "P-MASK", 1600000000000),
    review("u2", "P-MIST", 1600000100000),
    review("u2", "P-MIST", 1600000100000),  # duplicate
    review("u3", "P-LOOSE", 1610000000000, parent=False),  # no parent_asin, no metadata
]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_gz(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_reviews_and_meta_beside_them(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "raw" / "All_Beauty.jsonl", REVIEWS)
    write_jsonl(tmp_path / "raw" / "meta_All_Beauty.jsonl", META)
    assert detect_kind(source) == "amazon2023"
    assert find_meta(source) == tmp_path / "raw" / "meta_All_Beauty.jsonl"
    report = prepare_dataset("beauty", source, kcore=0, out=tmp_path / "out")
    assert (report.kind, report.duplicates, report.filtered_out) == ("amazon2023", 1, 0)
    assert (report.items, report.users, report.interactions) == (4, 3, 6)
    items = {i["item_id"]: i for i in read(tmp_path / "out" / "items.jsonl")}
    mist = items["P-MIST"]
    assert mist["title"] == "Rose Face Mist" and mist["summary"] == ""
    assert mist["metadata"]["features"] == ["Alcohol free"]
    assert mist["metadata"]["details"] == {"Item Form": "Spray"}
    assert "images" not in mist["metadata"] and "bought_together" not in mist["metadata"]
    assert items["P-LOOSE-variant"] == {"item_id": "P-LOOSE-variant", "title": "",
                                        "metadata": {}, "summary": ""}
    reviews = read(tmp_path / "out" / "reviews.jsonl")
    assert reviews[0] == {"user_id": "u1", "item_id": "P-MIST", "rating": 5.0,
                          "timestamp": 1588687728.923, "title": "u1 on P-MIST",
                          "text": "text u1 P-MIST", "aspects": None}
    assert reviews[1]["timestamp"] == 1588687800


def test_category_filter_and_gzip(tmp_path: Path) -> None:
    source = write_gz(tmp_path / "raw" / "Mixed.jsonl.gz", REVIEWS)
    meta = write_gz(tmp_path / "elsewhere" / "meta_Mixed.jsonl.gz", META)
    with pytest.raises(ConfigError, match="needs the item metadata"):
        prepare_dataset("beauty", source, categories=["skin care"], out=tmp_path / "out")
    report = prepare_dataset("beauty", source, meta=meta, categories=["all beauty"], kcore=0,
                             out=tmp_path / "out")
    assert report.filtered_out == 2  # the hammer and the item without metadata
    assert sorted(i["item_id"] for i in read(tmp_path / "out" / "items.jsonl")) == [
        "P-MASK", "P-MIST"]
    skin = prepare_dataset("skin", source, meta=meta, categories=["SKIN CARE"], kcore=0,
                           out=tmp_path / "skin")
    assert skin.items == 1


def test_meta_file_as_source_is_refused(tmp_path: Path) -> None:
    meta = write_jsonl(tmp_path / "meta_All_Beauty.jsonl", META)
    with pytest.raises(ConfigError, match="metadata file"):
        prepare_dataset("beauty", meta, out=tmp_path / "out")


def test_ambiguous_meta_needs_option(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "reviews.jsonl", REVIEWS)
    write_jsonl(tmp_path / "meta_A.jsonl", META)
    write_jsonl(tmp_path / "meta_B.jsonl", META)
    with pytest.raises(ConfigError, match="several metadata files"):
        prepare_dataset("beauty", source, out=tmp_path / "out")


def test_options_of_other_kinds_are_refused(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "All_Beauty.jsonl", REVIEWS)
    with pytest.raises(ConfigError, match="Yelp only"):
        prepare_dataset("beauty", source, city="Philadelphia", out=tmp_path / "out")


def test_malformed_lines(tmp_path: Path) -> None:
    source = write_gz(tmp_path / "All_Beauty.jsonl.gz", REVIEWS)
    meta = tmp_path / "meta_All_Beauty.jsonl"
    meta.write_text(json.dumps(META[0]) + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"meta_All_Beauty\.jsonl:2: expected a JSON object"):
        prepare_dataset("beauty", source, kcore=0, out=tmp_path / "out")

    bad = [*REVIEWS[:2], {**REVIEWS[2], "timestamp": "noon"}]
    write_gz(source, bad)
    with pytest.raises(InputError) as caught:
        prepare_dataset("beauty", source, kind="amazon2023", kcore=0, out=tmp_path / "out")
    assert (caught.value.line, caught.value.field) == (3, "timestamp")

    no_item = [{k: v for k, v in REVIEWS[0].items() if k not in ("asin", "parent_asin")}]
    write_gz(source, no_item)
    with pytest.raises(InputError, match=r"\.gz:1: field 'parent_asin': missing"):
        prepare_dataset("beauty", source, kind="amazon2023", kcore=0, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
