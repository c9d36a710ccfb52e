"""The offline mode study: each mode ranks as its oracle says, intervals are paired, and the
default mode reproduces the encoder's validation scoring on the real sample."""

from __future__ import annotations

import numpy as np
import pytest

from p4r.evaluation.metrics import bootstrap_ci
from p4r.evaluation.modes import (
    METRICS,
    MODES,
    Event,
    Ranked,
    Study,
    compare,
    event_interests,
    event_metrics,
    interval,
    rank_event,
    score_study,
)
from p4r.query.interests import attention_scores, best_persona_sims, recency_prior
from tests.conftest import YELP, require_shared


def _unit(*rows: list[float]) -> np.ndarray:
    array = np.array(rows, dtype=np.float64)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


# Two tastes: x (3 old interactions) and y (the 2 newest); items lean to one or the other.
HISTORY = _unit([1, 0, 0.1], [1, 0.1, 0], [1, 0, 0], [0, 1, 0], [0.1, 1, 0])
PERSONAS = {
    "x1": _unit([1, 0, 0], [0, 0, 1]),
    "x2": _unit([0.9, 0.2, 0]),
    "x3": _unit([0.8, 0.1, 0.3]),
    "y1": _unit([0, 1, 0]),
    "y2": _unit([0.2, 0.9, 0.1], [0, 0, 1]),
    "y3": _unit([0.1, 0.7, 0.5]),
    "z": _unit([0, 0, 1]),  # a summary-only item: one row
}
EVENT = Event("u", HISTORY, tuple(sorted(PERSONAS)), "x2")


def test_default_is_the_decayed_mean_profile_with_best_persona() -> None:
    weights = 0.65 ** np.arange(4, -1, -1)
    profile = weights @ HISTORY
    profile /= np.linalg.norm(profile)
    expected = sorted(PERSONAS, key=lambda i: (-(PERSONAS[i] @ profile).max(), i))
    ranked = rank_event(EVENT, PERSONAS, "default")
    assert ranked.items == expected
    for item, vector in zip(ranked.items, ranked.winning, strict=True):
        np.testing.assert_array_equal(vector, PERSONAS[item][np.argmax(PERSONAS[item] @ profile)])


def test_interests_mode_ranks_by_the_attention_oracle() -> None:
    ids = sorted(PERSONAS)
    sims, best = best_persona_sims(HISTORY, [PERSONAS[i] for i in ids])
    attention = attention_scores(sims, recency_prior(5, 0.65), 10.0)
    expected = [ids[j] for j in np.lexsort((np.arange(len(ids)), -attention.scores))]
    ranked = rank_event(EVENT, PERSONAS, "interests")
    assert ranked.items == expected
    first = ids.index(ranked.items[0])
    np.testing.assert_array_equal(
        ranked.winning[0], PERSONAS[ids[first]][best[attention.winner[first], first]])


def test_proportional_mode_reorders_only_the_head_and_keeps_every_item() -> None:
    default = rank_event(EVENT, PERSONAS, "default")
    ranked = rank_event(EVENT, PERSONAS, "proportional")
    assert sorted(ranked.items) == sorted(PERSONAS)
    interests = event_interests(EVENT)
    assert len(interests) == 3
    tdd_default = event_metrics(EVENT, default, interests)["TDD"]
    assert event_metrics(EVENT, ranked, interests)["TDD"] <= tdd_default
    one_taste = Event("u", HISTORY[:1].repeat(4, axis=0), EVENT.candidates, "x2")
    assert (rank_event(one_taste, PERSONAS, "proportional").items
            == rank_event(one_taste, PERSONAS, "default").items)
    with pytest.raises(ValueError, match="unknown mode"):
        rank_event(EVENT, PERSONAS, "popular")


def test_event_metrics_from_the_target_rank() -> None:
    ranked = Ranked(["a", "b", "x2", "c"], np.tile(HISTORY[0], (4, 1)))
    figures = event_metrics(EVENT, ranked, event_interests(EVENT))
    assert figures["HR@5"] == figures["HR@10"] == 1.0
    assert figures["MRR@10"] == pytest.approx(1 / 3)
    assert figures["NDCG@10"] == pytest.approx(1 / np.log2(4))
    assert list(figures) == list(METRICS)


def test_differences_are_paired_and_flag_zero() -> None:
    rng = np.random.default_rng(0)
    base = rng.random((30, len(METRICS)))
    figures = {"default": base, "interests": base.copy(), "proportional": base + 0.1}
    users = [f"u{i}" for i in range(30)]
    table = compare(figures, users)
    same = table["vs_default"]["interests"]["HR@5"]
    assert same["value"] == same["ci_low"] == same["ci_high"] == 0.0 and same["includes_zero"]
    shifted = table["vs_default"]["proportional"]["TDD"]
    assert shifted["ci_low"] == pytest.approx(0.1) and not shifted["includes_zero"]
    assert interval(base[:, 0], users) == bootstrap_ci(base[:, 0])  # one event per user


def test_score_study_shapes() -> None:
    study = Study("t", [EVENT, Event("v", HISTORY[:2], EVENT.candidates, "z")], PERSONAS, 6)
    figures = score_study(study)
    assert set(figures) == set(MODES)
    assert all(f.shape == (2, len(METRICS)) for f in figures.values())


def test_default_mode_reproduces_the_encoder_validation_scoring(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    """On the real sample, ``default`` ranks the rolling targets exactly as
    p4r.encoder.ranking.score_task does (the protocol the study reuses)."""
    root = require_shared(YELP)
    from p4r.datasets import load_dataset
    from p4r.encoder.ranking import (
        item_texts,
        next_item_events,
        sample_task,
        score_task,
        target_exposure,
        user_histories,
    )
    from p4r.encoder.train_run import own_items
    from p4r.evaluation.modes import rolling_study

    embed = tiny_encoder.encode
    study = rolling_study(root, embed, users=6)
    data = load_dataset("yelp", root)
    histories = user_histories(data.interactions)
    texts = item_texts(data)
    events = [e for e in next_item_events(histories, sorted(histories)[:6], 10, texts)
              if len(e.history) >= 5]
    task = sample_task(events, texts, target_exposure(i.item_id for i in data.interactions),
                       own_items(data), 19, 0)
    hr5, ndcg10 = score_task(task, embed, 0.65)
    figures = score_study(study)["default"]
    assert len(study.events) == len(hr5) > 0
    assert [e.target for e in study.events] == [e.target for e in task.events]
    np.testing.assert_array_equal(figures[:, METRICS.index("HR@5")], hr5)
    np.testing.assert_allclose(figures[:, METRICS.index("NDCG@10")], ndcg10)
    assert all(len(e.history) >= 5 for e in study.events)


def test_quality_table_end_to_end(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    root = require_shared(YELP)
    from p4r.evaluation.modes import format_table, quality_table

    table = quality_table(root, encoder=tiny_encoder, users=5)
    loo, rolling = table["loo"], table["rolling"]
    assert loo["users"] == loo["events"] == 5
    assert loo["candidates_min"] == loo["candidates_max"] == 20
    assert rolling["users"] == 5 and rolling["events"] > 5
    for part in (loo, rolling):
        assert set(part["modes"]) == set(MODES)
        assert set(part["vs_default"]) == {"interests", "proportional"}
        for figures in part["modes"].values():
            assert 0.0 <= figures["TDD"]["value"] <= 1.0
    assert table["protocol"]["tau"] == 10.0 and table["protocol"]["interests"] == 3
    text = format_table(table)
    assert "| proportional − default |" in text and "### rolling" in text


def test_eval_modes_command(tiny_models, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`p4r eval modes` prints the table (TDD beside the accuracy metrics), --json prints the
    same figures, --out writes them."""
    import json

    from click.testing import CliRunner

    from p4r.cli.evaluation import main as eval_cli

    root = require_shared(YELP)
    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
    out = tmp_path / "modes.json"
    args = ["modes", "--data-dir", str(root), "--users", "4", "--out", str(out)]
    shown = CliRunner().invoke(eval_cli, args, catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert "| mode | HR@5 | HR@10 | NDCG@10 | MRR@10 | TDD |" in shown.output
    assert "| interests − default |" in shown.output and "### rolling:" in shown.output
    written = json.loads(out.read_text())
    as_json = CliRunner().invoke(eval_cli, [*args[:-2], "--json"], catch_exceptions=False)
    assert json.loads(as_json.stdout) == written
    assert set(written["loo"]["modes"]) == {"default", "interests", "proportional"}
