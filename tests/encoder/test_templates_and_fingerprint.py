"""Text templates and encoder fingerprints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from p4r.datasets.models import Interaction, Item, Persona
from p4r.encoder.cache import EmbeddingCache, encode_cached
from p4r.encoder.fingerprint import fingerprint_for
from p4r.encoder.templates import TEMPLATE_VERSION, interaction_text, persona_text, summary_text
from p4r.errors import ConfigError


def test_persona_text_has_every_part() -> None:
    p = Persona("i", "P1", "Night Owl", "Eats late.", "Open until 2am.")
    text = persona_text(p, "A diner on Main St.")
    for part in ("Night Owl", "Eats late.", "A diner on Main St.", "Open until 2am."):
        assert part in text


def test_interaction_text_uses_aspects_not_reasons() -> None:
    it = Interaction("u", "i", 1.0, aspects={"cuisine_category": "Thai",
                                             "cuisine_category_reason": "mentions pad thai",
                                             "visit_context": None},
                     text="ignored when aspects exist", item_summary="A Thai place.")
    text = interaction_text(it)
    assert "A Thai place." in text and "cuisine category: Thai" in text
    assert "mentions pad thai" not in text and "visit context" not in text
    assert "ignored" not in text


def test_interaction_text_falls_back_to_review() -> None:
    it = Interaction("u", "i", 1.0, text="Loved the pho.")
    assert "Loved the pho." in interaction_text(it)


def test_summary_text() -> None:
    assert summary_text(Item("i", "Cafe", "Good coffee.")) == "Item: Cafe. Good coffee."


def test_default_fingerprint_is_offline_minilm() -> None:
    fp = fingerprint_for("all-MiniLM-L6-v2")
    assert fp.dim == 384 and fp.template == TEMPLATE_VERSION
    assert len(fp.weights_sha256) == 64
    assert fingerprint_for("sentence-transformers/all-MiniLM-L6-v2") == fp


def test_different_weights_different_fingerprint(tiny_models: dict[str, Path]) -> None:
    a, b = fingerprint_for(str(tiny_models["a"])), fingerprint_for(str(tiny_models["b"]))
    assert a.dim == b.dim == 32
    assert a.weights_sha256 != b.weights_sha256


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="P4R_ENCODER__MODEL='no-such/model'"):
        fingerprint_for("no-such/model")


def test_encoder_outputs_unit_vectors(tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    v = tiny_encoder.encode(["hello", "world"])
    assert v.shape == (2, 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_cache_skips_known_texts(tmp_path: Path, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    calls: list[int] = []

    def encode(texts):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return tiny_encoder.encode(texts)

    first = encode_cached(["a", "b", "a"], tiny_encoder.fingerprint, encode, cache)
    second = encode_cached(["b", "c"], tiny_encoder.fingerprint, encode, cache)
    assert calls == [2, 1], "each distinct text is encoded once"
    np.testing.assert_array_equal(first[1], second[0])
    np.testing.assert_array_equal(first[0], first[2])
    cache.close()


def test_bf16_stays_close_to_fp32(minilm) -> None:  # type: ignore[no-untyped-def]
    from p4r.encoder.model import Encoder
    from p4r.settings import EncoderSettings

    texts = ["A cozy ramen bar with rich tonkotsu broth.", "Vegan bistro with grain bowls."]
    bf16 = Encoder(EncoderSettings(precision="bf16", threads=2)).encode(texts)
    cos = np.sum(bf16 * minilm.encode(texts), axis=1)
    assert np.all(cos > 0.99)
