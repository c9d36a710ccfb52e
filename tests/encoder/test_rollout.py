"""The README's "Training the encoder and rolling it out" section, run as a test.

label (no LLM) → train → upsert --encoder → rerank, on the packaged demo data with a tiny
base encoder. The rollout must not depend on how the encoder's folder is spelled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import DEMO

CANDIDATES = "crumb-and-co,noodle-harbor,cafe-lumen"


def _run(cli: Any, *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def rolled_out(tiny_models: dict[str, Path], tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The README commands up to the swap: version 2 is built with the trained encoder."""
    from p4r.cli.index import main as index_cli
    from p4r.cli.train import main as train_cli

    monkeypatch.setenv("P4R_ENCODER__MODEL", str(tiny_models["a"]))
    monkeypatch.setenv("P4R_TRAIN__EPOCHS", "2")
    root = tmp_path / "data" / "demo"
    root.mkdir(parents=True)
    for name in ("items.jsonl", "reviews.jsonl", "personas.jsonl"):
        shutil.copy(DEMO / name, root / name)
    common = ["-d", "demo", "--data-dir", str(root)]
    _run(index_cli, "upsert", *common)
    _run(train_cli, "align", *common)                      # p4r-train align -d demo
    out = tmp_path / "encoders" / "demo"
    trained = json.loads(_run(train_cli, *common, "--out-dir", str(out), "--json"))
    assert trained["best_epoch"] is not None
    swapped = json.loads(_run(index_cli, "upsert", *common, "--encoder",
                              str(out / "model"), "--json"))
    assert swapped["version"] == 2
    return {"root": root, "model": out / "model", "common": common}


def test_rollout_serves_the_trained_encoder_through_any_path(
        rolled_out: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from p4r.cli.query import main as query_cli

    copy = shutil.copytree(rolled_out["model"], tmp_path / "elsewhere" / "model")
    monkeypatch.chdir(rolled_out["model"].parent)
    for spelled in (str(rolled_out["model"]), "model", str(copy)):
        monkeypatch.setenv("P4R_ENCODER__MODEL", spelled)
        ranked = json.loads(_run(query_cli, "rerank", *rolled_out["common"], "--user-id",
                                 "u-chloe", "--candidates", CANDIDATES, "--json"))
        assert {r["item_id"] for r in ranked} == set(CANDIDATES.split(","))


def test_rollout_needs_no_encoder_setting(rolled_out: dict[str, Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from p4r.cli.query import main as query_cli
    from p4r.query import Reranker
    from p4r.settings import load_settings
    from p4r.store import open_backend

    monkeypatch.delenv("P4R_ENCODER__MODEL")  # back to the default: not the index's encoder
    ranked = json.loads(_run(query_cli, "rerank", *rolled_out["common"], "--user-id",
                             "u-chloe", "--candidates", CANDIDATES, "--json"))
    assert len(ranked) == 3
    settings = load_settings()
    with open_backend(settings) as store:
        reranker = Reranker("demo", store, settings.query, settings.encoder)
        result = reranker.rerank(history=[{"item_id": "cafe-lumen", "timestamp": 1700000000,
                                           "text": "Quiet tables and good pour-over"}],
                                 candidates=CANDIDATES.split(","))
    assert len(result.items) == 3
