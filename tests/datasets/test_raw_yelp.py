"""Yelp Open Dataset adapter on tiny synthetic dumps."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from p4r.datasets.prepare import prepare_dataset
from p4r.datasets.raw import detect_kind
from p4r.datasets.raw.yelp import BUSINESS_FILE, REVIEW_FILE
from p4r.errors import InputError, NotFoundError
from tests.conftest import write_jsonl

BUSINESSES = [
    {"business_id": "b-diner", "name": "Liberty Diner", "city": "Philadelphia", "state": "PA",
     "categories": "Diners, Restaurants, Breakfast & Brunch", "stars": 4.0, "review_count": 3,
     "attributes": {"WiFi": "u'free'"}},
    {"business_id": "b-cafe", "name": "Bean There", "city": "philadelphia ", "state": "PA",
     "categories": "Coffee & Tea, food", "stars": 4.5, "review_count": 3, "attributes": None},
    {"business_id": "b-pgh", "name": "Steel City Grill", "city": "Pittsburgh", "state": "PA",
     "categories": "Restaurants", "stars": 3.5, "review_count": 3},
    {"business_id": "b-shop", "name": "Gift Shop", "city": "Philadelphia", "state": "PA",
     "categories": "Shopping, Gifts", "stars": 5.0, "review_count": 3},
    {"business_id": "b-none", "name": "Mystery", "city": "Philadelphia", "state": "PA",
     "categories": None, "stars": 3.0, "review_count": 1},
]


def review(n: int, user: str, business: str, date: str, stars: float = 4.0) -> dict:
    return {"review_id": f"r{n}", "user_id": user, "business_id": business, "stars": stars,
            "useful": 0, "text": f"review {n} by {user}", "date": date}


REVIEWS = [
    review(1, "u1", "b-diner", "2019-01-01 10:00:00"),
    review(2, "u1", "b-cafe", "2019-02-01 10:00:00"),
    review(3, "u1", "b-pgh", "2019-03-01 10:00:00"),
    review(4, "u1", "b-shop", "2019-04-01 10:00:00"),
    review(5, "u2", "b-cafe", "2020-01-01 08:30:00", stars=2),
    review(6, "u2", "b-diner", "2020-01-02 08:30:00"),
    review(7, "u2", "b-diner", "2020-01-02 08:30:00"),  # duplicate of 6
    review(8, "u3", "b-none", "2021-05-05 12:00:00"),
    review(9, "u3", "b-diner", "2021-05-06 12:00:00"),
]


def yelp_folder(root: Path, reviews: list[dict] = REVIEWS, *, gz: bool = False) -> Path:
    """Write the two Yelp files (optionally gzipped) into ``root``."""
    if not gz:
        write_jsonl(root / BUSINESS_FILE, BUSINESSES)
        write_jsonl(root / REVIEW_FILE, reviews)
        return root
    root.mkdir(parents=True, exist_ok=True)
    for name, data in ((BUSINESS_FILE, BUSINESSES), (REVIEW_FILE, reviews)):
        with gzip.open(root / f"{name}.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in data)
    return root


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_filters_by_city_state_and_category(tmp_path: Path) -> None:
    source = yelp_folder(tmp_path / "yelp")
    assert detect_kind(source) == "yelp"
    assert detect_kind(source / REVIEW_FILE) == "yelp"
    report = prepare_dataset("yelp", source, kcore=0, out=tmp_path / "out")
    assert report.kind == "yelp"
    assert (report.source_reviews, report.filtered_out, report.duplicates) == (9, 3, 1)
    assert (report.items, report.users, report.interactions) == (2, 3, 5)
    items = read(tmp_path / "out" / "items.jsonl")
    assert [i["item_id"] for i in items] == ["b-cafe", "b-diner"]
    diner = items[1]
    assert diner["title"] == "Liberty Diner" and diner["summary"] == ""
    assert diner["metadata"]["categories"] == ["Diners", "Restaurants", "Breakfast & Brunch"]
    assert diner["metadata"]["city"] == "Philadelphia"
    assert diner["metadata"]["attributes"] == {"WiFi": "u'free'"}
    assert "name" not in diner["metadata"] and "business_id" not in diner["metadata"]
    reviews = read(tmp_path / "out" / "reviews.jsonl")
    assert reviews[0] == {"user_id": "u1", "item_id": "b-diner", "rating": 4.0,
                          "timestamp": 1546336800, "text": "review 1 by u1", "aspects": None}
    assert [r["item_id"] for r in reviews if r["user_id"] == "u2"] == ["b-cafe", "b-diner"]
    assert not (tmp_path / "out" / "personas.jsonl").exists()


def test_other_place_and_categories(tmp_path: Path) -> None:
    source = yelp_folder(tmp_path / "yelp")
    pgh = prepare_dataset("pgh", source, city="Pittsburgh", kcore=0, out=tmp_path / "pgh")
    assert (pgh.items, pgh.interactions) == (1, 1)
    shops = prepare_dataset("shops", source, categories=["GIFTS"], kcore=0,
                            out=tmp_path / "shops")
    assert (shops.items, shops.interactions) == (1, 1)
    assert [i["item_id"] for i in read(tmp_path / "shops" / "items.jsonl")] == ["b-shop"]
    everything = prepare_dataset("all", source, city="", state="", categories=[], kcore=0,
                                 out=tmp_path / "all")
    assert (everything.items, everything.interactions) == (5, 8)


def test_kcore_cascades(tmp_path: Path) -> None:
    source = yelp_folder(tmp_path / "yelp")
    # k=2 drops u3 (one kept review), which leaves the diner with 2 and the cafe with 2.
    report = prepare_dataset("yelp", source, kcore=2, out=tmp_path / "out")
    assert (report.users, report.items, report.interactions) == (2, 2, 4)
    assert report.dropped_by_kcore == 1
    with pytest.raises(InputError, match="no interactions left"):
        prepare_dataset("yelp", source, kcore=3, out=tmp_path / "k3")
    assert not (tmp_path / "k3").exists()


def test_gzipped_files_give_the_same_output(tmp_path: Path) -> None:
    plain = prepare_dataset("yelp", yelp_folder(tmp_path / "plain"), kcore=0,
                            out=tmp_path / "a")
    gz = prepare_dataset("yelp", yelp_folder(tmp_path / "gz", gz=True), kcore=0,
                         out=tmp_path / "b")
    for name in ("items.jsonl", "reviews.jsonl", "split/test.jsonl"):
        assert (plain.folder / name).read_bytes() == (gz.folder / name).read_bytes()


def test_malformed_review_line(tmp_path: Path) -> None:
    source = yelp_folder(tmp_path / "yelp")
    text = (source / REVIEW_FILE).read_text().splitlines()
    text[2] = text[2][:40]
    (source / REVIEW_FILE).write_text("\n".join(text) + "\n")
    with pytest.raises(InputError) as caught:
        prepare_dataset("yelp", source, out=tmp_path / "out")
    assert caught.value.file == str(source / REVIEW_FILE)
    assert caught.value.line == 3
    assert "malformed JSON" in str(caught.value)

    bad_date = [*REVIEWS[:4], {**REVIEWS[4], "date": "yesterday"}]
    yelp_folder(tmp_path / "dates", bad_date)
    with pytest.raises(InputError, match=r":5: field 'date': unreadable timestamp"):
        prepare_dataset("yelp", tmp_path / "dates", kcore=0, out=tmp_path / "out")


def test_missing_review_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "yelp" / BUSINESS_FILE, BUSINESSES)
    with pytest.raises(NotFoundError, match=REVIEW_FILE):
        prepare_dataset("yelp", tmp_path / "yelp", out=tmp_path / "out")
