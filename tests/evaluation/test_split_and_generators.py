"""Leave-one-out split and the CF generators (they beat popularity on a real slice)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
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


def _synthetic(users: int = 150, items: int = 80, seed: int = 0) -> InteractionMatrix:
    """Two taste groups over two halves of the catalogue, with some noise."""
    rng = np.random.default_rng(seed)
    pairs = []
    for u in range(users):
        half = u % 2
        for _ in range(8):
            item = rng.integers(0, items // 2) + half * (items // 2)
            if rng.random() < 0.15:
                item = rng.integers(0, items)
            pairs.append((f"u{u}", f"i{item}"))
    return InteractionMatrix.from_pairs(pairs)


def test_bpr_is_reproducible_with_one_thread() -> None:
    data = _synthetic()
    first = train(data, "bpr", epochs=5, seed=3, threads=1)
    again = train(data, "bpr", epochs=5, seed=3, threads=1)
    other = train(data, "bpr", epochs=5, seed=4, threads=1)
    assert first.name == "bpr" and first.epochs == 5 and first.seconds > 0
    np.testing.assert_array_equal(first.user_emb, again.user_emb)
    np.testing.assert_array_equal(first.item_emb, again.item_emb)
    assert not np.array_equal(first.item_emb, other.item_emb)
    assert first.user_emb.shape == (data.n_users, 65)  # 64 factors + implicit's bias column
    np.testing.assert_array_equal(first.user_emb[:, -1], 1.0)


def test_recommend_ranks_by_the_returned_factors() -> None:
    data = _synthetic()
    trained = train(data, "bpr", epochs=20, seed=0)
    via_implicit = top_k(trained, data, 10)
    via_numpy = top_k(dataclasses.replace(trained, recommender=None), data, 10)
    assert via_implicit.keys() == via_numpy.keys()
    for user, ranked in via_implicit.items():
        assert [i for i, _ in ranked] == [i for i, _ in via_numpy[user]]
        np.testing.assert_allclose([s for _, s in ranked], [s for _, s in via_numpy[user]],
                                   rtol=1e-5)


def test_bpr_learns_the_taste_groups() -> None:
    data = _synthetic()
    ranked = top_k(train(data, "bpr", seed=0), data, 10)
    own_half = [sum((int(i[1:]) >= 40) == (int(u[1:]) % 2 == 1) for i, _ in items) / 10
                for u, items in ranked.items()]
    assert np.mean(own_half) > 0.8


def test_top_k_never_fills_with_training_items() -> None:
    data = InteractionMatrix.from_pairs([("a", "x"), ("a", "y"), ("b", "x"), ("c", "z")])
    trained = train(data, "bpr", epochs=2, seed=0)
    for model in (trained, dataclasses.replace(trained, recommender=None)):
        ranked = top_k(model, data, 5)
        assert [i for i, _ in ranked["a"]] == ["z"]
        assert sorted(i for i, _ in ranked["c"]) == ["x", "y"]


def test_cf_bench_runs_interleaved(tmp_path: Path) -> None:
    from p4r.bench.cf import run_cf_bench

    data = _synthetic(users=60)
    by_user: dict[str, list[str]] = {}
    for u, i in data.pairs.tolist():
        by_user.setdefault(data.users[u], []).append(data.items[i])
    train_lines = [f"{u} {' '.join(items[:-1])}" for u, items in by_user.items()]
    test_lines = [f"{u} {items[-1]}" for u, items in by_user.items()]
    (tmp_path / "train.txt").write_text("\n".join(train_lines) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(test_lines) + "\n")
    result = run_cf_bench(tmp_path, repeats=2, torch_epochs=1, bpr_epochs=(3,), k=5)
    assert [(r["variant"], r["repeat"]) for r in result["rows"]] == [
        ("bpr-torch", 0), ("bpr-implicit@3", 0), ("bpr-implicit@3", 1), ("bpr-torch", 1)]
    summary = result["summary"]
    assert summary["bpr-torch"]["speedup_train_wall_s"] == 1.0
    assert summary["bpr-implicit@3"]["train_cpu_s"] > 0
    assert 0.0 <= summary["bpr-implicit@3"]["HR@5"] <= 1.0
