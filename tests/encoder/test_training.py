"""Encoder training: real judge-style alignments make the encoder agree with the judge more."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from p4r.datasets import load_dataset
from p4r.encoder.training import (
    EncoderTrainer,
    TrainingTuple,
    build_tuples,
    load_adapter,
    split_by_user,
)
from p4r.errors import InputError
from p4r.settings import TrainSettings
from tests.conftest import DEMO, YELP, require_shared, write_jsonl
from tests.reasoning.llm_server import ScriptedLLM, user_text


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]{4,}", text.lower()))


def lexical_judge(request: dict[str, Any]) -> str:
    """A deterministic judge: the persona sharing most words with the user's profile."""
    text = user_text(request)
    profile = _words(text.split("Next place:")[0])
    personas = re.findall(r"^(P\d+): (.*)$", text, flags=re.M)
    best = max(personas, key=lambda p: (len(_words(p[1]) & profile), -int(p[0][1:])))
    return json.dumps({"persona_id": best[0], "reason": "Shared interests. The words match."})


@pytest.fixture(scope="module")
def yelp_alignments(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The real Yelp sample in canonical files, judged by the scripted judge over HTTP."""
    from p4r.reasoning.cache import ResponseCache
    from p4r.reasoning.client import LLMClient
    from p4r.reasoning.stages import Context, run_align
    from p4r.settings import LLMSettings

    data = load_dataset("yelp", require_shared(YELP))
    root = tmp_path_factory.mktemp("yelp-canonical")
    write_jsonl(root / "items.jsonl", [{"item_id": i.item_id, "title": i.title,
                                       "summary": i.summary} for i in data.items.values()])
    write_jsonl(root / "reviews.jsonl", [
        {"user_id": i.user_id, "item_id": i.item_id, "timestamp": i.timestamp,
         "rating": i.rating, "text": i.text, "aspects": i.aspects} for i in data.interactions])
    write_jsonl(root / "personas.jsonl", [
        {"item_id": item, "personas": [{"persona_id": p.persona_id, "name": p.name,
                                        "description": p.description, "rationale": p.rationale}
                                       for p in personas]}
        for item, personas in data.personas.items()])
    server = ScriptedLLM().start()
    server.responder = lexical_judge
    cache = ResponseCache(root / "llm.sqlite")
    client = LLMClient(LLMSettings(base_url=server.base_url, api_key="k", concurrency=2), cache)
    report = run_align(Context(root, "yelp", client, progress=False))
    server.stop()
    cache.close()
    assert report.done > 30
    return root, load_dataset("yelp-canonical", root)


FAST = TrainSettings(method="lora", epochs=2, batch_size=8, max_seq_length=48,
                     learning_rate=5e-4, val_fraction=0.0, seed=0, precision="fp32",
                     chunk_size=128)  # 48-token texts: one chunk per call is small enough


@pytest.mark.slow  # trains the real MiniLM (no fixture tells: it is loaded by name)
def test_training_raises_judge_agreement(yelp_alignments, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, data = yelp_alignments
    tuples = build_tuples(data, root / "alignments.jsonl", last_n=5)[:56]
    trainer = EncoderTrainer("all-MiniLM-L6-v2", FAST, gamma=0.65, threads=2)
    before, chance = trainer.agreement(tuples)
    report = trainer.fit(tuples, [], tmp_path / "out", progress=False)
    after, _ = trainer.agreement(tuples)
    assert after > before, f"agreement {before:.3f} → {after:.3f} (chance {chance:.3f})"
    assert report.epochs[-1].train_loss < report.epochs[0].train_loss
    log = [json.loads(x) for x in (tmp_path / "out" / "train_log.jsonl").read_text()
           .splitlines()]
    assert [e["epoch"] for e in log] == [0, 1]

    # the adapter reloads onto the base model, and the merged model gives the same outputs
    from sentence_transformers import SentenceTransformer

    texts = [t.positive_text for t in tuples[:6]] + list(tuples[0].history)
    trained = trainer.embed(texts).detach().numpy()
    merged = SentenceTransformer(str(tmp_path / "out" / "model"), device="cpu")
    merged.max_seq_length = FAST.max_seq_length
    adapter = load_adapter("all-MiniLM-L6-v2", tmp_path / "out" / "adapter",
                           FAST.max_seq_length)
    for other in (merged, adapter):
        emb = other.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        np.testing.assert_allclose(emb, trained, atol=2e-5)
    fingerprint = json.loads((tmp_path / "out" / "fingerprint.json").read_text())
    assert fingerprint["dim"] == 384 and fingerprint["peft"] is True


def _tuples(n: int, item_of: Any = lambda k: f"i{k}") -> list[TrainingTuple]:
    return [TrainingTuple(user_id=f"u{k}", item_id=item_of(k),
                          history=(f"history {k} likes topic {k % 3}", f"more {k}"),
                          positive=0, item_personas=(f"persona {k} topic {k % 3}", f"other {k}"))
            for k in range(n)]


def test_same_item_negatives_are_masked(tiny_models: dict[str, Path]) -> None:
    import torch

    trainer = EncoderTrainer(str(tiny_models["a"]), FAST, gamma=0.65, threads=1)
    batch = _tuples(3, item_of=lambda k: "same")
    # every other positive belongs to the same item: nothing to contrast, loss is exactly 0
    assert trainer.loss(batch).item() == pytest.approx(0.0, abs=1e-6)
    mixed = _tuples(4)
    loss = trainer.loss(mixed)
    assert loss.item() > 0
    loss.backward()
    grads = [p.grad for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), "gradients reach the LoRA weights"
    assert all("lora" in n for n, p in trainer.model.named_parameters() if p.requires_grad)
    assert isinstance(loss, torch.Tensor)


def test_full_finetune_trains_every_weight(tiny_models: dict[str, Path]) -> None:
    trainer = EncoderTrainer(str(tiny_models["a"]),
                             FAST.model_copy(update={"method": "full"}), gamma=0.65)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and not any("lora" in n for n in trainable)


def test_checkpoint_resume(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    tuples = _tuples(12)
    train, val, held = split_by_user(tuples, 0.25, seed=0)
    assert len(held) == len(val) == 3 and not {t.user_id for t in train} & set(held)
    one = EncoderTrainer(str(tiny_models["a"]), FAST.model_copy(update={"epochs": 1}),
                         gamma=0.65)
    one.fit(train, val, tmp_path / "run", progress=False)
    two = EncoderTrainer(str(tiny_models["a"]), FAST.model_copy(update={"epochs": 2}),
                         gamma=0.65)
    report = two.fit(train, val, tmp_path / "run", progress=False)
    assert report.resumed_from == 0
    assert [e.epoch for e in report.epochs] == [0, 1]
    assert report.epochs[0].val_agreement is not None and report.epochs[0].chance == 0.5
    assert (tmp_path / "run" / "model" / "modules.json").exists()


def test_alignment_errors_name_the_line(tmp_path: Path) -> None:
    data = load_dataset("demo", DEMO)
    bad = write_jsonl(tmp_path / "a.jsonl", [
        {"user_id": "u-ana", "item_id": "crumb-and-co", "persona_id": "P1"},
        {"user_id": "u-ana", "item_id": "crumb-and-co", "persona_id": "P9"}])
    with pytest.raises(InputError, match=r"a.jsonl:2: field 'persona_id'"):
        build_tuples(data, bad, 10)
    ok = write_jsonl(tmp_path / "b.jsonl", [
        {"user_id": "u-ana", "item_id": "crumb-and-co", "persona_id": "P2"},
        {"user_id": "u-ana", "item_id": "cafe-lumen", "persona_id": "P1"}])  # first visit
    tuples = build_tuples(data, ok, 10)
    assert len(tuples) == 1 and len(tuples[0].history) == 1 and tuples[0].positive == 1


@pytest.mark.parametrize("method", ["head", "lora"])
def test_cli_train_then_reindex(tiny_models: dict[str, Path], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    from p4r.cli.index import main as index_cli
    from p4r.cli.train import main as train_cli

    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
    monkeypatch.setenv("P4R_TRAIN__EPOCHS", "1")
    monkeypatch.setenv("P4R_TRAIN__METHOD", method)
    monkeypatch.setenv("P4R_TRAIN__BATCH_SIZE", "4")
    root = tmp_path / "demo"
    root.mkdir()
    for name in ("items.jsonl", "reviews.jsonl", "personas.jsonl"):
        (root / name).write_text((DEMO / name).read_text())
    data = load_dataset("demo", DEMO)
    rows = []
    for user in sorted(data.users):
        visits = [i for i in data.interactions if i.user_id == user]
        rows += [{"user_id": user, "item_id": v.item_id, "persona_id": "P1"}
                 for v in visits[1:] if v.item_id in data.personas]
    write_jsonl(root / "alignments.jsonl", rows)
    out = tmp_path / "enc"
    result = CliRunner().invoke(train_cli, ["-d", "demo", "--data-dir", str(root), "--out-dir",
                                            str(out), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["train"] + report["validation"] == report["tuples"] > 5
    assert report["method"] == method and report["held_out_users"] >= 1
    expected = {"model", "fingerprint.json", "train_log.jsonl"}
    if method == "lora":
        expected |= {"adapter", "checkpoint"}
    assert {p.name for p in out.iterdir()} >= expected
    assert CliRunner().invoke(index_cli, ["upsert", "-d", "demo"]).exit_code == 0
    swapped = CliRunner().invoke(index_cli, ["upsert", "-d", "demo", "--encoder",
                                             str(out / "model"), "--json"])
    assert swapped.exit_code == 0, swapped.output
    assert json.loads(swapped.stdout)["version"] == 2


def test_bench_reports_ratios(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
                              ) -> None:
    from p4r.cli.bench import main as bench_cli

    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
    result = CliRunner().invoke(bench_cli, ["train", "--steps", "2", "--texts", "16",
                                            "--batch-size", "4", "--json"],
                                catch_exceptions=False)
    rows = json.loads(result.stdout)["rows"]
    assert [(r["what"], r["precision"]) for r in rows] == [
        ("train", "fp32"), ("encode", "fp32"), ("train", "bf16"), ("encode", "bf16")]
    assert rows[0]["ratio_to_fp32"] == 1.0 and all(r["per_second"] > 0 for r in rows)
