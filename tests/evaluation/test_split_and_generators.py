"""Leave-one-out split and the CF generators (they beat popularity on a real slice)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p4r.datasets.models import Interaction
from p4r.datasets.split import leave_one_out, write_split
from p4r.evaluation.generators import (
    InteractionMatrix,
    popularity_top_k,
    read_cf_lines,
    top_k,
    train,
)
from p4r.evaluation.metrics import evaluate
from tests.conftest import SHARED, require_shared


def _it(user: str, item: str, ts: float) -> Interaction:
    return Interaction(user_id=user, item_id=item, timestamp=ts)


def test_leave_one_out_by_time(tmp_path: Path) -> None:
    rows = [_it("u", "c", 3), _it("u", "a", 1), _it("u", "d", 4), _it("u", "b", 2),
            _it("v", "x", 1), _it("v", "y", 2), _it("w", "z", 5)]
    split = leave_one_out(rows)
    assert [i.item_id for i in split.train["u"]] == ["a", "b"]
    assert split.valid["u"].item_id == "c" and split.test["u"].item_id == "d"
    assert "v" not in split.valid and split.test["v"].item_id == "y"
    assert [i.item_id for i in split.train["w"]] == ["z"] and "w" not in split.test
    paths = write_split(split, tmp_path / "split")
    test_rows = [json.loads(x) for x in paths[2].read_text().splitlines()]
    assert sorted(r["item_id"] for r in test_rows) == ["d", "y"]
    assert len(paths[0].read_text().splitlines()) == 4


def test_split_ties_break_by_item_id() -> None:
    split = leave_one_out([_it("u", "b", 1), _it("u", "a", 1)])
    assert split.test["u"].item_id == "b"


@pytest.fixture(scope="module")
def book_slice() -> tuple[InteractionMatrix, dict[str, set[str]]]:
    root = require_shared(SHARED / "amazon-book-cf")
    users = {str(u) for u in range(2500)}
    train_pairs = [p for p in read_cf_lines(root / "train.txt") if p[0] in users]
    gt: dict[str, set[str]] = {}
    for user, item in read_cf_lines(root / "test.txt"):
        if user in users:
            gt.setdefault(user, set()).add(item)
    return InteractionMatrix.from_pairs(train_pairs), gt


@pytest.mark.slow  # trains BPR and LightGCN with torch, 10-15 epochs on 2,500 real users
@pytest.mark.parametrize("model", ["bpr", "lightgcn"])
def test_generators_beat_popularity(book_slice, model: str) -> None:  # type: ignore[no-untyped-def]
    data, gt = book_slice
    pop = evaluate({u: [i for i, _ in v] for u, v in popularity_top_k(data).items()}, gt, (20,))
    trained = train(data, model, epochs=15 if model == "bpr" else 10, seed=0, threads=2)  # type: ignore[arg-type]
    ranked = top_k(trained, data, 20)
    result = evaluate({u: [i for i, _ in v] for u, v in ranked.items()}, gt, (20,))
    assert result.summary()["HR@20"] > 2 * pop.summary()["HR@20"]
    assert result.summary()["NDCG@20"] > pop.summary()["NDCG@20"]


def test_top_k_excludes_training_items(book_slice) -> None:  # type: ignore[no-untyped-def]
    data, _ = book_slice
    trained = train(data, "bpr", epochs=1, seed=0)
    ranked = top_k(trained, data, 20)
    seen: dict[str, set[str]] = {}
    for u, i in data.pairs.tolist():
        seen.setdefault(data.users[u], set()).add(data.items[i])
    for user, items in list(ranked.items())[:200]:
        assert len(items) == 20
        assert not {i for i, _ in items} & seen[user]
        scores = [s for _, s in items]
        assert scores == sorted(scores, reverse=True)
