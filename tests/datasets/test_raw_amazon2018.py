"""Amazon Review Data 2018 adapter on the real All_Beauty 5-core file."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from p4r.datasets import load_dataset
from p4r.datasets.prepare import PrepareReport, prepare_dataset
from p4r.datasets.raw import detect_kind
from p4r.errors import InputError, NotFoundError
from tests.conftest import SHARED, require_shared

BEAUTY = SHARED / "amazon-2018-all-beauty" / "All_Beauty_5.json.gz"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def beauty(tmp_path_factory: pytest.TempPathFactory) -> tuple[PrepareReport, Path]:
    """All_Beauty_5 prepared once with the default 5-core."""
    source = require_shared(BEAUTY)
    out = tmp_path_factory.mktemp("beauty") / "beauty"
    return prepare_dataset("beauty", source, out=out), out


def test_kind_is_detected() -> None:
    assert detect_kind(require_shared(BEAUTY)) == "amazon2018"


def test_five_core_counts(beauty: tuple[PrepareReport, Path]) -> None:
    report, out = beauty
    # The published 5-core repeats 1,108 reviews (same user, item and time); without them
    # far fewer users and items keep 5 interactions.
    assert report.kind == "amazon2018"
    assert (report.source_reviews, report.duplicates) == (5269, 1108)
    assert (report.items, report.users, report.interactions) == (28, 151, 768)
    assert report.dropped_by_kcore == 5269 - 1108 - 768
    reviews = rows(out / "reviews.jsonl")
    assert len(reviews) == 768
    assert min(Counter(r["user_id"] for r in reviews).values()) >= 5
    assert min(Counter(r["item_id"] for r in reviews).values()) >= 5
    assert len({(r["user_id"], r["item_id"], r["timestamp"]) for r in reviews}) == 768


def test_canonical_rows(beauty: tuple[PrepareReport, Path]) -> None:
    _report, out = beauty
    items = rows(out / "items.jsonl")
    reviews = rows(out / "reviews.jsonl")
    assert [i["item_id"] for i in items] == sorted({r["item_id"] for r in reviews})
    per_item = Counter(r["item_id"] for r in reviews)
    for item in items:
        assert set(item) == {"item_id", "title", "metadata", "summary"}
        assert (item["title"], item["summary"]) == ("", "")
        assert item["metadata"]["category"] == "All_Beauty"
        assert item["metadata"]["review_count"] == per_item[item["item_id"]]
    first = reviews[0]
    assert set(first) == {"user_id", "item_id", "rating", "timestamp", "title", "text",
                          "aspects"}
    assert first["aspects"] is None
    assert all(isinstance(r["timestamp"], int) for r in reviews)
    assert any(r["title"] == "Five Stars" for r in reviews)  # the review summary
    assert not (out / "personas.jsonl").exists()
    with pytest.raises(NotFoundError, match="no personas"):
        load_dataset("beauty", out)


def test_split_is_leave_one_out(beauty: tuple[PrepareReport, Path]) -> None:
    _report, out = beauty
    reviews = rows(out / "reviews.jsonl")
    train, valid, test = (rows(out / "split" / f"{n}.jsonl") for n in ("train", "valid", "test"))
    assert len(train) + len(valid) + len(test) == len(reviews)
    history = Counter(r["user_id"] for r in reviews)
    assert Counter(r["user_id"] for r in test) == dict.fromkeys(
        [u for u, n in history.items() if n >= 2], 1)
    assert Counter(r["user_id"] for r in valid) == dict.fromkeys(
        [u for u, n in history.items() if n >= 3], 1)
    latest = {}
    for r in reviews:
        latest[r["user_id"]] = max(latest.get(r["user_id"], 0), r["timestamp"])
    valid_by_user = {r["user_id"]: r for r in valid}
    for row in test:
        assert row["timestamp"] == latest[row["user_id"]]
        assert valid_by_user[row["user_id"]]["timestamp"] <= row["timestamp"]


def test_rerun_is_byte_identical(beauty: tuple[PrepareReport, Path]) -> None:
    _report, out = beauty
    before = snapshot(out)
    prepare_dataset("beauty", BEAUTY, out=out)
    assert snapshot(out) == before
    assert set(before) == {"items.jsonl", "reviews.jsonl", "prepare.json", "split/train.jsonl",
                           "split/valid.jsonl", "split/test.jsonl"}


def test_without_kcore(tmp_path: Path) -> None:
    report = prepare_dataset("beauty", require_shared(BEAUTY), kcore=0, out=tmp_path / "k0")
    assert (report.items, report.users, report.interactions) == (85, 991, 4161)
    assert report.dropped_by_kcore == 0


def test_subsample_is_deterministic(tmp_path: Path) -> None:
    source = require_shared(BEAUTY)
    a = prepare_dataset("beauty", source, kcore=2, max_interactions=1000, seed=7,
                        out=tmp_path / "a")
    b = prepare_dataset("beauty", source, kcore=2, max_interactions=1000, seed=7,
                        out=tmp_path / "b")
    c = prepare_dataset("beauty", source, kcore=2, max_interactions=1000, seed=8,
                        out=tmp_path / "c")
    assert snapshot(a.folder) == snapshot(b.folder)
    assert rows(a.folder / "reviews.jsonl") != rows(c.folder / "reviews.jsonl")
    for report in (a, c):
        assert 0 < report.interactions <= 1000
        assert report.dropped_by_subsample > 0
        reviews = rows(report.folder / "reviews.jsonl")
        assert min(Counter(r["user_id"] for r in reviews).values()) >= 2
        assert min(Counter(r["item_id"] for r in reviews).values()) >= 2


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    source = tmp_path / "Tiny_5.json.gz"
    good = {"reviewerID": "u1", "asin": "i1", "overall": 5.0, "reviewText": "ok",
            "summary": "Fine", "unixReviewTime": 1}
    with gzip.open(source, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(good) + "\n" + '{"reviewerID": "u2", "asin"\n')
    with pytest.raises(InputError, match=r"Tiny_5\.json\.gz:2: malformed JSON"):
        prepare_dataset("tiny", source, kcore=0, out=tmp_path / "out")
    missing = dict(good)
    del missing["unixReviewTime"]
    with gzip.open(source, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(good) + "\n" + json.dumps(missing) + "\n")
    with pytest.raises(InputError) as caught:
        prepare_dataset("tiny", source, kind="amazon2018", kcore=0, out=tmp_path / "out")
    assert (caught.value.line, caught.value.field) == (2, "unixReviewTime")
    assert not (tmp_path / "out").exists()


def test_dedupe_text_collapses_variant_copies(tmp_path: Path) -> None:
    """The 5-core file lists one review under several product variants; --dedupe-text keeps
    one copy, so a copy of a training review cannot become the test target."""
    from p4r.datasets.prepare import prepare_dataset

    source = require_shared(SHARED / "amazon-2018-all-beauty" / "All_Beauty_5.json.gz")
    plain = prepare_dataset("b1", source, kcore=0, out=tmp_path / "plain")
    by_text = prepare_dataset("b2", source, kcore=0, dedupe_text=True, out=tmp_path / "text")
    assert plain.interactions == 4161
    assert by_text.interactions == 1334
    rows = [json.loads(x) for x in (tmp_path / "text" / "reviews.jsonl").read_text().splitlines()]
    keys = {(r["user_id"], r["timestamp"], " ".join(r["text"].split()).lower()) for r in rows}
    assert len(keys) == len(rows)
