"""ONNX export and the torch-free serving encoder: parity, fingerprint, no torch, reranking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from p4r.datasets.models import Dataset
from p4r.encoder.fingerprint import fingerprint_for, resolve_model_path
from p4r.encoder.onnx_export import export_onnx
from p4r.encoder.serving import MANIFEST_NAME, OnnxEncoder, configured_fingerprint
from p4r.encoder.templates import interaction_text, persona_text, summary_text
from p4r.errors import ConfigError
from p4r.query import Reranker
from p4r.settings import EncoderSettings, load_settings
from p4r.store.edge import EdgeBackend
from tests.conftest import DEMO, upsert

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = ["cafe-lumen", "green-fern-bistro", "ironwood-steakhouse", "tide-sushi",
              "taqueria-sol", "saffron-lane"]


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default MiniLM exported once per session (about 4 s on 2 cores)."""
    start = time.perf_counter()
    out = export_onnx(resolve_model_path("all-MiniLM-L6-v2"),
                      tmp_path_factory.mktemp("onnx") / "minilm")
    print(f"MiniLM ONNX export: {time.perf_counter() - start:.1f} s")
    return out


@pytest.fixture(scope="session")
def _onnx_encoder(minilm_onnx: Path) -> OnnxEncoder:
    return OnnxEncoder(minilm_onnx, EncoderSettings(backend="onnx", threads=2))


@pytest.fixture
def onnx_encoder(_onnx_encoder: OnnxEncoder) -> OnnxEncoder:
    """The exported MiniLM served through fastembed, loaded once per session."""
    return _onnx_encoder


@pytest.fixture(scope="session")
def real_texts() -> list[str]:
    """Demo personas, summaries and interactions, plus very short and over-long texts."""
    from p4r.datasets import load_dataset

    data = load_dataset("demo", DEMO)
    texts = [persona_text(p, data.items[item].summary if item in data.items else "")
             for item, personas in sorted(data.personas.items()) for p in personas][:12]
    texts += [summary_text(item) for item in list(data.items.values())[:4]]
    texts += [interaction_text(it) for it in data.interactions[:4]]
    long_review = " ".join(t for t in texts[:8])  # well past MiniLM's 256-token limit
    texts += ["", "ok", "Café crème brûlée — naïve über-good!", long_review * 3,
              "sushi " * 400]
    return texts


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_export_folder_and_manifest(minilm_onnx: Path) -> None:
    for name in ("model.onnx", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt", "config.json", MANIFEST_NAME):
        assert (minilm_onnx / name).is_file(), name
    manifest = json.loads((minilm_onnx / MANIFEST_NAME).read_text())
    assert manifest["fingerprint"] == fingerprint_for("all-MiniLM-L6-v2").as_dict()
    assert manifest["max_seq_length"] == 256 and manifest["dim"] == 384
    assert manifest["pooling"] == "mean" and manifest["normalize"] is True
    assert manifest["source_normalize"] is True
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    tokenizer_config = json.loads((minilm_onnx / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 256


def test_parity_with_torch_encoder(minilm, onnx_encoder: OnnxEncoder,  # type: ignore[no-untyped-def]
                                   real_texts: list[str]) -> None:
    """Same texts, same vectors: cosine ≥ 0.9999 for every text, short or truncated."""
    torch_vectors = minilm.encode(real_texts)
    onnx_vectors = onnx_encoder.encode(real_texts)
    assert onnx_vectors.dtype == np.float32 and onnx_vectors.shape == (len(real_texts), 384)
    np.testing.assert_allclose(np.linalg.norm(onnx_vectors, axis=1), 1.0, atol=1e-5)
    cosines = _cosines(torch_vectors, onnx_vectors)
    assert cosines.min() >= 0.9999, dict(zip(real_texts, cosines.tolist(), strict=True))
    one_by_one = np.stack([onnx_encoder.encode([t])[0] for t in real_texts[:5]])
    assert _cosines(one_by_one, onnx_vectors[:5]).min() >= 0.99999  # padding changes nothing


def test_tiny_model_parity_and_settings_cap(tiny_models: dict[str, Path], tiny_encoder,  # type: ignore[no-untyped-def]
                                            tmp_path: Path, real_texts: list[str]) -> None:
    """A model without Normalize, with its own 64-token limit, and a tighter settings cap."""
    out = export_onnx(tiny_models["a"], tmp_path / "tiny")
    served = OnnxEncoder(out, EncoderSettings(backend="onnx", threads=1))
    assert served.fingerprint == tiny_encoder.fingerprint and served.dim == 32
    assert _cosines(tiny_encoder.encode(real_texts), served.encode(real_texts)).min() >= 0.9999

    from p4r.encoder.model import Encoder

    capped = EncoderSettings(model=str(tiny_models["a"]), max_seq_length=16, threads=1)
    torch_capped = Encoder(capped).encode(real_texts)
    onnx_capped = OnnxEncoder(out, capped.model_copy(update={"backend": "onnx"}))
    assert onnx_capped.max_seq_length == 16
    assert _cosines(torch_capped, onnx_capped.encode(real_texts)).min() >= 0.9999


def test_fingerprint_is_the_source_models(onnx_encoder: OnnxEncoder, minilm,  # type: ignore[no-untyped-def]
                                          minilm_onnx: Path) -> None:
    assert onnx_encoder.fingerprint == minilm.fingerprint
    assert onnx_encoder.dim == minilm.dim == 384
    settings = EncoderSettings(backend="onnx", onnx_path=str(minilm_onnx))
    assert configured_fingerprint(settings) == minilm.fingerprint


def test_settings_select_the_onnx_backend(monkeypatch: pytest.MonkeyPatch,
                                          minilm_onnx: Path) -> None:
    monkeypatch.setenv("P4R_ENCODER__BACKEND", "onnx")
    monkeypatch.setenv("P4R_ENCODER__ONNX_PATH", str(minilm_onnx))
    settings = load_settings().encoder
    assert settings.backend == "onnx" and OnnxEncoder(settings=settings).path == minilm_onnx
    monkeypatch.setenv("P4R_ENCODER__BACKEND", "tensorrt")
    with pytest.raises(ConfigError, match="P4R_ENCODER__BACKEND"):
        load_settings()


def test_bad_folders_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs P4R_ENCODER__ONNX_PATH"):
        OnnxEncoder(settings=EncoderSettings(backend="onnx"))
    with pytest.raises(ConfigError, match="is not a p4r ONNX export"):
        OnnxEncoder(tmp_path)


def _demo_index(root: Path, dataset: Dataset, encoder) -> EdgeBackend:  # type: ignore[no-untyped-def]
    backend = EdgeBackend(root)
    upsert(dataset, backend, encoder)
    return backend


def _history(dataset: Dataset, user: str) -> list[dict]:
    return [{"item_id": i.item_id, "timestamp": i.timestamp, "aspects": i.aspects,
             "text": i.text} for i in dataset.interactions if i.user_id == user]


def test_reranker_serves_a_torch_index_through_onnx(tmp_path: Path, demo_dataset, minilm,  # type: ignore[no-untyped-def]
                                                    minilm_onnx: Path) -> None:
    """Index built with the torch encoder; history requests are embedded by the ONNX one."""
    backend = _demo_index(tmp_path / "edge", demo_dataset, minilm)
    try:
        settings = EncoderSettings(backend="onnx", onnx_path=str(minilm_onnx))
        reranker = Reranker("demo", backend, encoder=settings)
        indexed = reranker.rerank(user_id="u-chloe", candidates=CANDIDATES)
        fresh = reranker.rerank(history=_history(demo_dataset, "u-chloe"),
                                candidates=CANDIDATES)
        assert isinstance(reranker.served.encoder, OnnxEncoder)
        assert [i.item_id for i in fresh.items] == [i.item_id for i in indexed.items]
        assert [i.score for i in fresh.items] == pytest.approx(
            [i.score for i in indexed.items], abs=1e-4)
    finally:
        backend.close()


def test_reranker_refuses_an_export_of_another_model(tmp_path: Path, demo_dataset, minilm,  # type: ignore[no-untyped-def]
                                                     tiny_models: dict[str, Path]) -> None:
    backend = _demo_index(tmp_path / "edge", demo_dataset, minilm)
    try:
        other = export_onnx(tiny_models["b"], tmp_path / "tiny-b")
        settings = EncoderSettings(backend="onnx", onnx_path=str(other))
        # Requests that embed nothing are served; embedding text is refused, because the
        # export's manifest names another source model than the index's.
        reranker = Reranker("demo", backend, encoder=settings)
        assert reranker.rerank(user_id="u-ben", candidates=CANDIDATES).items
        with pytest.raises(ConfigError, match="encoder fingerprint mismatch"):
            reranker.rerank(history=_history(demo_dataset, "u-ben"), candidates=CANDIDATES)
    finally:
        backend.close()


_NO_TORCH_SCRIPT = textwrap.dedent("""
    import json, socket, sys

    def no_network(*args, **kwargs):
        raise OSError("network access during serving")

    socket.socket.connect = no_network
    socket.create_connection = no_network

    from p4r.store.edge import EdgeBackend
    from p4r.encoder.serving import OnnxEncoder
    from p4r.query import Reranker
    from p4r.settings import load_settings

    settings = load_settings()
    vector = OnnxEncoder(settings=settings.encoder).encode([sys.argv[2]])[0]
    backend = EdgeBackend(settings.data_dir / "edge")
    reranker = Reranker("demo", backend, encoder=settings.encoder)
    result = reranker.rerank(history=json.loads(sys.argv[1]), candidates=sys.argv[3:])
    backend.close()
    from p4r.query import open_reranker

    live = open_reranker(settings, "demo")  # live interactions, encoded torch-free
    added = live.add_interactions([{"user_id": "u-ana", "item_id": "tide-sushi",
                                    "timestamp": 1.75e9, "text": "Quiet omakase, great value"}])
    profile = live.user_profile("u-ana")
    assert "torch" not in sys.modules, "serving imported torch"
    print(json.dumps({"vector": vector.tolist(), "accepted": added.accepted,
                      "live": profile.live, "user": live.user_vector("u-ana").tolist(),
                      "ranked": [[r.item_id, r.score] for r in result.items],
                      "heavy": sorted(m for m in ("torch", "transformers",
                                                   "sentence_transformers") if m in sys.modules)}))
""")


@pytest.mark.system  # a fresh Python process
def test_serving_path_never_imports_torch(tmp_path: Path, demo_dataset, minilm,  # type: ignore[no-untyped-def]
                                          minilm_onnx: Path) -> None:
    """A fresh process, configured only by P4R_* variables and with sockets disabled."""
    data_dir = tmp_path / "serve"
    backend = _demo_index(data_dir / "edge", demo_dataset, minilm)
    history = _history(demo_dataset, "u-ana")
    expected = Reranker("demo", backend).rerank(history=history, candidates=CANDIDATES)
    backend.close()

    env = {k: v for k, v in os.environ.items() if not k.startswith("P4R_")}
    env.update(P4R_DATA_DIR=str(data_dir), P4R_ENCODER__BACKEND="onnx",
               P4R_ENCODER__ONNX_PATH=str(minilm_onnx), P4R_ENCODER__THREADS="2",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    text = "Persona: Remote Freelancer. Works from cafés most weekdays."
    run = subprocess.run([sys.executable, "-c", _NO_TORCH_SCRIPT, json.dumps(history), text,
                          *CANDIDATES], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    assert float(np.dot(out["vector"], minilm.encode([text])[0])) >= 0.9999
    assert [row[0] for row in out["ranked"]] == [r.item_id for r in expected.items]
    assert [row[1] for row in out["ranked"]] == pytest.approx(
        [r.score for r in expected.items], abs=1e-4)
    # The live interaction was encoded by ONNX and applied: it equals the torch oracle.
    assert out["accepted"] == 1 and out["live"] == 1
    from p4r.datasets.models import Interaction
    from p4r.encoder.profile import user_vector
    from p4r.encoder.templates import interaction_text

    rows = [i for i in demo_dataset.interactions if i.user_id == "u-ana"]
    rows.append(Interaction(user_id="u-ana", item_id="tide-sushi", timestamp=1.75e9,
                            text="Quiet omakase, great value",
                            item_summary=demo_dataset.items["tide-sushi"].summary))
    rows.sort(key=lambda i: (i.timestamp, i.item_id))
    oracle = user_vector(minilm.encode([interaction_text(i) for i in rows]))
    assert float(np.dot(out["user"], oracle)) >= 0.9999


def test_trained_head_model_exports_with_parity(tiny_models: dict[str, Path],
                                                tmp_path: Path) -> None:
    """p4r-train's default output (encoder + linear head) serves torch-free, same vectors."""
    import torch

    from p4r.encoder.head import HeadTrainer
    from p4r.encoder.model import Encoder
    from p4r.settings import TrainSettings

    head = HeadTrainer(str(tiny_models["a"]), TrainSettings(), gamma=0.65,
                       embed_base=lambda texts: np.zeros((len(texts), 32)), max_seq_length=48)
    head._init_params(32)
    with torch.no_grad():
        head.delta.normal_(0.0, 0.3)
    model_dir = head.save(tmp_path / "trained")
    torch_encoder = Encoder(EncoderSettings(model=str(model_dir)))
    assert torch_encoder.fingerprint.max_seq_length == 48
    served = OnnxEncoder(export_onnx(model_dir, tmp_path / "onnx"))
    assert served.fingerprint == torch_encoder.fingerprint
    texts = ["Quiet tables and good pour-over", "Level-5 tantanmen, fiery", "word " * 80]
    np.testing.assert_allclose(served.encode(texts), torch_encoder.encode(texts), atol=1e-4)
    base = Encoder(EncoderSettings(model=str(tiny_models["a"]), max_seq_length=48))
    np.testing.assert_allclose(torch_encoder.encode(texts), head.transform(base.encode(texts)),
                               atol=1e-5)


def test_serving_encoder_refuses_an_export_of_another_model(tmp_path: Path, minilm,  # type: ignore[no-untyped-def]
                                                            tiny_models: dict[str, Path]) -> None:
    from p4r.encoder.factory import serving_encoder

    other = export_onnx(tiny_models["b"], tmp_path / "tiny-b")
    settings = EncoderSettings(backend="onnx", onnx_path=str(other))
    with pytest.raises(ConfigError, match=r"encoder fingerprint mismatch: p4r_demo_personas "
                                          r"was built with all-MiniLM-L6-v2 .*"
                                          r"set P4R_ENCODER__ONNX_PATH"):
        serving_encoder(settings, minilm.fingerprint, index_name="p4r_demo_personas")


_FACTORY_SCRIPT = textwrap.dedent("""
    import json, sys

    from p4r.encoder.factory import serving_encoder
    from p4r.encoder.fingerprint import Fingerprint
    from p4r.settings import load_settings

    index = Fingerprint.from_dict(json.loads(sys.argv[1]))
    encoder = serving_encoder(load_settings().encoder, index)
    built = "torch" in sys.modules
    vector = encoder.encode([sys.argv[2]])[0]
    print(json.dumps({"vector": vector.tolist(), "torch_at_build": built,
                      "torch_after_encode": "torch" in sys.modules}))
""")


def test_serving_encoder_for_onnx_never_imports_torch(tmp_path: Path, minilm,  # type: ignore[no-untyped-def]
                                                      minilm_onnx: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P4R_")}
    env.update(P4R_DATA_DIR=str(tmp_path), P4R_ENCODER__BACKEND="onnx",
               P4R_ENCODER__ONNX_PATH=str(minilm_onnx), P4R_ENCODER__THREADS="1",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    text = "Quiet omakase, great value"
    run = subprocess.run([sys.executable, "-c", _FACTORY_SCRIPT,
                          json.dumps(minilm.fingerprint.as_dict()), text],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["torch_at_build"] is False and out["torch_after_encode"] is False
    assert float(np.dot(out["vector"], minilm.encode([text])[0])) >= 0.9999
