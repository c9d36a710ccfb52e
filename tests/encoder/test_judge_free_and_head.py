"""Judge-free alignments, held-out-user validation, the linear head and epoch selection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from p4r.datasets import load_dataset
from p4r.encoder.judge_free import SUMMARY_PERSONA, agreement_with_judge, next_item_alignments
from p4r.encoder.ranking import (
    exposure_bucket,
    item_texts,
    next_item_events,
    sample_task,
    user_histories,
)
from p4r.encoder.templates import interaction_text, persona_text
from p4r.encoder.training import build_tuples
from p4r.settings import Settings, TrainSettings
from tests.conftest import DEMO, YELP, require_shared, write_jsonl


def _canonical_demo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("items.jsonl", "reviews.jsonl", "personas.jsonl"):
        (root / name).write_text((DEMO / name).read_text())
    return root


def test_next_item_alignments_self_label_with_zero_llm_calls(
        tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from p4r.cli.train import main as train_cli
    from tests.reasoning.llm_server import ScriptedLLM

    server = ScriptedLLM().start()
    monkeypatch.setenv("P4R_LLM__BASE_URL", server.base_url)
    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
    root = _canonical_demo(tmp_path / "demo")
    result = CliRunner().invoke(train_cli, ["align", "-d", "demo", "--data-dir", str(root),
                                            "--json"], catch_exceptions=False)
    server.stop()
    assert result.exit_code == 0, result.output
    assert server.requests == [] and json.loads(result.stdout)["llm_calls"] == 0
    rows = [json.loads(x) for x in (root / "alignments.jsonl").read_text().splitlines()]
    data = load_dataset("demo", root)
    from p4r.encoder.judge_free import training_histories

    expected = {(u, r.item_id) for u, rows_ in training_histories(data).items()
                for r in rows_[1:]}
    assert {(r["user_id"], r["item_id"]) for r in rows} == expected
    assert set(rows[0]) == {"user_id", "item_id", "timestamp", "persona_id", "reason"}
    # the chosen persona is the closest one to the history under the encoder
    from p4r.encoder.model import Encoder
    from p4r.encoder.ranking import user_matrix
    from p4r.settings import EncoderSettings

    encoder = Encoder(EncoderSettings(model=str(tiny_models["a"])))
    histories = training_histories(data)
    for row in rows:
        personas = data.personas.get(row["item_id"])
        if not personas:
            assert row["persona_id"] == SUMMARY_PERSONA
            continue
        rows_ = histories[row["user_id"]]
        k = next(i for i, r in enumerate(rows_) if r.item_id == row["item_id"] and i > 0)
        user = user_matrix([encoder.encode([interaction_text(i) for i in rows_[:k][-10:]])],
                           0.65)[0]
        summary = data.items[row["item_id"]].summary
        sims = encoder.encode([persona_text(p, summary) for p in personas]) @ user
        assert row["persona_id"] == personas[int(np.argmax(sims))].persona_id
    assert len(build_tuples(data, root / "alignments.jsonl", 10)) == len(rows)


def test_agreement_with_an_llm_judge_counts_only_multi_persona_items(tmp_path: Path) -> None:
    judge = write_jsonl(tmp_path / "judge.jsonl", [
        {"user_id": "u", "item_id": "a", "persona_id": "P1"},
        {"user_id": "u", "item_id": "b", "persona_id": "P2"},
        {"user_id": "u", "item_id": "c", "persona_id": "P1"}])
    ours = [{"user_id": "u", "item_id": "a", "persona_id": "P1"},
            {"user_id": "u", "item_id": "b", "persona_id": "P1"},
            {"user_id": "u", "item_id": "c", "persona_id": "P1"}]
    agreement = agreement_with_judge(ours, judge, {"a": 2, "b": 4, "c": 1})
    assert (agreement.compared, agreement.agreed) == (2, 1)
    assert agreement.rate == 0.5 and agreement.chance == pytest.approx((1 / 2 + 1 / 4) / 2)


def test_validation_negatives_share_the_targets_exposure() -> None:
    data = load_dataset("yelp", require_shared(YELP))
    texts = item_texts(data)
    histories = user_histories(data.interactions)
    users = sorted(histories)[:10]
    events = next_item_events(histories, users, 10, texts)
    exposure = {item: n % 6 for n, item in enumerate(sorted(texts))}
    own = {u: {i.item_id for i in histories[u]} for u in users}
    task = sample_task(events, texts, exposure, own, 19, seed=0)
    assert len(task.events) == len(events) > 100
    for event, cands in zip(task.events, task.candidates, strict=True):
        assert cands[0] == event.target and len(set(cands)) == len(cands)
        bucket = exposure_bucket(exposure[event.target])
        assert all(exposure_bucket(exposure[c]) == bucket for c in cands[1:])
        assert not own[event.user_id] & set(cands[1:])


@pytest.fixture(scope="module")
def yelp_tiny(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, Any]:
    """The real Yelp sample, next-item alignments under the tiny encoder."""
    from p4r.encoder.train_run import cached_embedder

    data = load_dataset("yelp", require_shared(YELP))
    keep = sorted(data.users)[:20]  # 20 users and their items keep the tests fast
    data.interactions = [i for i in data.interactions if i.user_id in keep]
    seen = {i.item_id for i in data.interactions} | set(data.personas)
    data.items = {k: v for k, v in data.items.items() if k in seen}
    settings = Settings(encoder={"model": str(tiny_models["a"]), "threads": 2},
                        train=TrainSettings(epochs=4, patience=10, seed=0))
    from p4r.encoder.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path_factory.mktemp("cache") / "embeddings.sqlite")
    embed, _ = cached_embedder(settings.encoder.model, settings, cache)
    memo: dict[str, np.ndarray] = {}

    def cached(texts: Any) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        if missing:
            memo.update(zip(missing, embed(missing), strict=True))
        return np.stack([memo[t] for t in texts])

    root = tmp_path_factory.mktemp("align")
    write_jsonl(root / "a.jsonl", next_item_alignments(data, cached, last_n=10, gamma=0.65))
    return {"data": data, "settings": settings, "cache": cache,
            "tuples": build_tuples(data, root / "a.jsonl", 10)}


def test_head_keeps_the_best_epoch_and_saves_what_it_measured(yelp_tiny: dict[str, Any],
                                                              tmp_path: Path) -> None:
    from p4r.encoder.model import Encoder
    from p4r.encoder.ranking import score_task
    from p4r.encoder.train_run import train_encoder

    logs: list[Any] = []
    run = train_encoder(yelp_tiny["data"], yelp_tiny["tuples"], yelp_tiny["settings"],
                        tmp_path / "out", on_epoch=logs.append, cache=yelp_tiny["cache"])
    report = run.report
    assert [e.epoch for e in report.epochs] == [0, 1, 2, 3] == [e.epoch for e in logs]
    scores = [(e.val_hr5, e.val_ndcg10) for e in report.epochs]
    assert report.best_epoch == scores.index(max(scores))
    assert report.baseline is not None and report.baseline["users"] == len(run.plan.held_out)
    assert not {t.user_id for t in run.plan.train} & set(run.plan.held_out)
    # the saved folder is a plain sentence-transformers model that reproduces the kept epoch
    saved = Encoder(yelp_tiny["settings"].encoder.model_copy(
        update={"model": str(report.model_dir)}))
    assert run.plan.validation is not None
    hr, ndcg = score_task(run.plan.validation, run.embed, 0.65)
    assert (hr.mean(), ndcg.mean()) == pytest.approx(max(scores), abs=1e-9)
    task = run.plan.validation
    texts = [*task.events[0].history, *(t for i in task.candidates[0]
                                        for t in task.item_texts[i])]
    np.testing.assert_allclose(saved.encode(texts), run.embed(texts), atol=1e-5)
    fingerprint = json.loads((tmp_path / "out" / "fingerprint.json").read_text())
    assert fingerprint["method"] == "head" and fingerprint["max_seq_length"] == 64


def test_early_stopping_says_why_and_epochs_are_honoured(yelp_tiny: dict[str, Any],
                                                         tmp_path: Path) -> None:
    from p4r.encoder.train_run import train_encoder

    settings = yelp_tiny["settings"]
    settings = settings.model_copy(update={"train": settings.train.model_copy(
        update={"epochs": 6, "patience": 1, "learning_rate": 0.5})})  # diverges at once
    report = train_encoder(yelp_tiny["data"], yelp_tiny["tuples"], settings,
                           tmp_path / "out", cache=yelp_tiny["cache"]).report
    assert len(report.epochs) < 6 and report.stop_reason.startswith(
        f"stopped after epoch {len(report.epochs)}: no gain on held-out users for 1 epochs")
    assert report.best_epoch == len(report.epochs) - 2
    many = settings.model_copy(update={"train": settings.train.model_copy(
        update={"epochs": 3, "patience": 99, "learning_rate": 0.5})})
    assert len(train_encoder(yelp_tiny["data"], yelp_tiny["tuples"], many,
                             tmp_path / "three", cache=yelp_tiny["cache"]).report.epochs) == 3


def test_cross_validation_reports_paired_gains(yelp_tiny: dict[str, Any],
                                               tmp_path: Path) -> None:
    from p4r.evaluation.training_cv import cross_validate, user_folds

    folds = user_folds(sorted(yelp_tiny["data"].users), 2, seed=0)
    assert not set(folds[0]) & set(folds[1]) and len(folds[0]) + len(folds[1]) == 20
    settings = yelp_tiny["settings"]
    settings = settings.model_copy(update={"train": settings.train.model_copy(
        update={"epochs": 2})})
    result = cross_validate(yelp_tiny["data"], yelp_tiny["tuples"], settings, tmp_path,
                            folds=2, cache=yelp_tiny["cache"])
    summary = result.summary()
    assert summary["users"] == 20 and summary["folds"] == 2
    for name in ("HR@5", "NDCG@10"):
        gain = summary[name]["gain"]
        assert gain["value"] == pytest.approx(summary[name]["trained"]["value"]
                                              - summary[name]["vanilla"]["value"])
        assert gain["ci_low"] <= gain["value"] <= gain["ci_high"]


def test_checkpointed_forward_gives_the_same_gradients(tiny_models: dict[str, Path]) -> None:
    import torch

    from p4r.encoder.training import EncoderTrainer

    settings = TrainSettings(method="full", chunk_size=2, precision="fp32")
    trainer = EncoderTrainer(str(tiny_models["a"]), settings, gamma=0.65)
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    trainer.model.train()
    texts = ["a cosy ramen bar", "vegan grain bowls", "a cosy ramen bar", "late-night tacos",
             "espresso and pastries"]
    weights = torch.arange(1.0, 6.0)[:, None]
    (trainer.embed(texts) * weights).sum().backward()
    chunked = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    trainer.model.zero_grad()
    plain = torch.nn.functional.normalize(trainer._forward(texts), dim=-1)
    (plain * weights).sum().backward()
    direct = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    assert len(chunked) == len(direct) > 0
    for a, b in zip(chunked, direct, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
