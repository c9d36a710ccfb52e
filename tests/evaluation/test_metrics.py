"""Metrics: hand-computed cases and the reference evaluator's figures on the shared example."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p4r.evaluation.io import read_ground_truth, read_ranked
from p4r.evaluation.metrics import (
    bootstrap_ci,
    evaluate,
    first_relevant_rank,
    scenario_groups,
    user_metrics,
)
from tests.conftest import YELP, require_shared


def test_first_relevant_rank_counts_pad() -> None:
    assert first_relevant_rank(["[PAD]", "a", "b"], {"b"}) == 3
    assert first_relevant_rank(["a"], {"z"}) is None


def test_hand_computed_user() -> None:
    m = user_metrics(3, (1, 5))
    assert m["HR@1"] == 0.0 and m["MRR@1"] == 0.0 and m["NDCG@1"] == 0.0
    assert m["HR@5"] == 1.0
    assert m["MRR@5"] == pytest.approx(1 / 3)
    assert m["NDCG@5"] == pytest.approx(1 / math.log2(4))  # = 0.5


def test_hand_computed_average() -> None:
    cands = {"u1": ["a", "b", "c"], "u2": ["x", "y", "z"], "u3": ["q"]}
    gt = {"u1": {"a"}, "u2": {"z"}, "u3": {"nope"}, "u4": {"a"}}  # u4: no candidates → miss
    summary = evaluate(cands, gt, ks=(1, 3)).summary()
    assert summary["users"] == 4
    assert summary["HR@1"] == pytest.approx(1 / 4)
    assert summary["HR@3"] == pytest.approx(2 / 4)
    assert summary["MRR@3"] == pytest.approx((1 + 1 / 3) / 4)
    assert summary["NDCG@3"] == pytest.approx((1 + 1 / math.log2(4)) / 4)


def test_reference_evaluator_figures() -> None:
    root = require_shared(YELP)
    summary = evaluate(read_ranked(root / "eval_candidates.jsonl"),
                       read_ground_truth(root / "eval_gt.jsonl")).summary()
    expected = {"HR@5": 0.090909, "MRR@5": 0.041342, "NDCG@5": 0.053133, "HR@10": 0.181818,
                "NDCG@10": 0.083817, "HR@20": 0.298701, "NDCG@20": 0.111901}
    assert summary["users"] == 77
    for name, value in expected.items():
        # the README lists six decimals; our exact values round to them
        assert round(summary[name], 6) == pytest.approx(value, abs=1e-9), name
    # exact rational values: 7, 14 and 23 hits among 77 users
    assert summary["HR@5"] == pytest.approx(7 / 77, abs=1e-12)
    assert summary["HR@10"] == pytest.approx(14 / 77, abs=1e-12)
    assert summary["HR@20"] == pytest.approx(23 / 77, abs=1e-12)


def test_scenarios_split_by_percentiles() -> None:
    # user counts: u1 10, u2 5, u3 1; item counts: a 12, b 3, c 1
    pairs = [("u1", "a")] * 8 + [("u1", "b")] * 2 + [("u2", "a")] * 4 + [("u2", "b")]
    pairs += [("u3", "c")]
    gt = {"u1": {"c"}, "u2": {"a"}, "u3": {"b"}, "stranger": {"a"}}
    groups = scenario_groups(pairs, gt)
    assert groups["warm"] == {"u1"}
    assert groups["cold"] == {"u3"}
    assert groups["head"] == {"u2", "stranger"}
    assert groups["tail"] == {"u1"}


def test_bootstrap_interval_brackets_the_mean() -> None:
    values = np.array([0, 1] * 50, dtype=float)
    low, high = bootstrap_ci(values, seed=1)
    assert low < 0.5 < high
    assert low > 0.3 and high < 0.7
