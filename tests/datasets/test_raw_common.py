"""Shared raw-adapter steps: line reading, dedupe, k-core, user subsampling, kind detection."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from p4r.datasets.raw import detect_kind, open_source
from p4r.datasets.raw.common import (
    RawReview,
    dedupe,
    iter_json_lines,
    kcore,
    subsample_users,
)
from p4r.errors import ConfigError, InputError, NotFoundError


def r(user: str, item: str, ts: float = 0.0) -> RawReview:
    return RawReview(user_id=user, item_id=item, timestamp=ts, rating=5.0, text="")


def test_dedupe_keeps_the_first_of_each_user_item_time() -> None:
    first, again, later = r("u", "i", 1), r("u", "i", 1), r("u", "i", 2)
    first.text = "first"
    kept, dropped = dedupe([first, again, later])
    assert (kept, dropped) == ([first, later], 1)
    assert kept[0].text == "first"


def test_kcore_iterates_until_stable() -> None:
    # u3 has 1 interaction; dropping it leaves item c with 1, whose removal leaves u2 with 1.
    reviews = [r("u1", "a"), r("u1", "b"), r("u2", "b"), r("u2", "c"), r("u3", "c"),
               r("u4", "a"), r("u4", "b")]
    assert {(x.user_id, x.item_id) for x in kcore(reviews, 2)} == {
        ("u1", "a"), ("u1", "b"), ("u4", "a"), ("u4", "b")}
    assert kcore(reviews, 0) == reviews
    assert kcore(reviews, 1) == reviews
    assert kcore(reviews, 3) == []


def test_subsample_keeps_whole_histories_deterministically() -> None:
    reviews = [r(f"u{u}", f"i{i}", i) for u in range(20) for i in range(u % 4 + 1)]
    sample = subsample_users(reviews, 15, seed=3)
    assert sample == subsample_users(list(reversed(reviews))[::-1], 15, seed=3)
    assert len(sample) == 15  # small histories fill the budget exactly
    users = {x.user_id for x in sample}
    for user in users:
        assert [x for x in sample if x.user_id == user] == [
            x for x in reviews if x.user_id == user]
    assert {x.user_id for x in subsample_users(reviews, 15, seed=4)} != users
    assert subsample_users(reviews, 1000, seed=3) == reviews


def test_gzip_and_bad_bytes_name_the_line(tmp_path: Path) -> None:
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(b'{"a": 1}\n\n{"a": "\xff"}\n')
    with pytest.raises(InputError, match=r"a\.jsonl:3: not UTF-8"):
        list(iter_json_lines(plain))
    packed = tmp_path / "misnamed.jsonl"  # gzip is told by its magic bytes, not the name
    packed.write_bytes(gzip.compress(b"".join(b'{"a": %d}\n' % i for i in range(4000))))
    assert len(list(iter_json_lines(packed))) == 4000
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(packed.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"cut\.jsonl\.gz:\d+: unreadable gzip"):
        list(iter_json_lines(truncated))
    with pytest.raises(NotFoundError, match="file not found"):
        list(iter_json_lines(tmp_path / "absent.jsonl"))


def test_detect_kind_refuses_what_it_cannot_tell(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        detect_kind(tmp_path / "absent")
    with pytest.raises(ConfigError, match="not a Yelp dataset folder"):
        detect_kind(tmp_path)
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"foo": 1}) + "\n")
    with pytest.raises(ConfigError, match="pass --kind"):
        detect_kind(odd)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="empty file"):
        detect_kind(empty)
    with pytest.raises(ConfigError, match="unknown dataset kind"):
        open_source(odd, kind="netflix")
