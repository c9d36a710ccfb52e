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


# -- fingerprints identify weights and sequence length, never paths -----------------------------
def test_fingerprint_ignores_the_path_text(tiny_models: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    absolute = fingerprint_for(str(tiny_models["a"]))
    monkeypatch.chdir(tiny_models["a"].parent)
    relative = fingerprint_for(tiny_models["a"].name)
    copied = fingerprint_for(str(shutil.copytree(tiny_models["a"], tmp_path / "copy")))
    assert absolute == relative == copied
    assert copied.source == str((tmp_path / "copy").resolve()) != absolute.source


def test_fingerprint_records_the_sequence_length(tiny_models: dict[str, Path]) -> None:
    own = fingerprint_for(str(tiny_models["a"]))
    assert own.max_seq_length == 64  # the tiny model's own length
    assert fingerprint_for(str(tiny_models["a"]), 256).max_seq_length == 64  # cap above own
    capped = fingerprint_for(str(tiny_models["a"]), 32)
    assert capped.max_seq_length == 32 and capped != own
    assert "max_seq_length 32 vs 64" in capped.difference(own)


def test_old_stored_fingerprints_still_read() -> None:
    from p4r.encoder.fingerprint import Fingerprint

    legacy = {"model": "m", "weights_sha256": "ab" * 32, "dim": 384, "template": "t1"}
    fp = Fingerprint.from_dict(legacy)
    assert fp.max_seq_length is None and fp.source is None
    assert Fingerprint.from_dict(fp.as_dict()) == fp
    current = Fingerprint.from_dict({**legacy, "max_seq_length": 256, "source": "/x"})
    assert fp.accepts(current) and not current.accepts(fp) and fp != current
    other = Fingerprint.from_dict({**legacy, "weights_sha256": "cd" * 32})
    assert not fp.accepts(other)


def test_cache_key_separates_sequence_lengths(tmp_path: Path,
                                              tiny_models: dict[str, Path]) -> None:
    from p4r.encoder.model import Encoder
    from p4r.settings import EncoderSettings

    cache = EmbeddingCache(tmp_path / "c.sqlite")
    text = "word " * 200  # longer than both lengths, so truncation matters
    short = Encoder(EncoderSettings(model=str(tiny_models["a"]), max_seq_length=16, threads=1))
    full = Encoder(EncoderSettings(model=str(tiny_models["a"]), threads=1))
    a = encode_cached([text + "x"], short.fingerprint, short.encode, cache)
    b = encode_cached([text + "x"], full.fingerprint, full.encode, cache)
    np.testing.assert_allclose(a, short.encode([text + "x"]), atol=1e-6)
    np.testing.assert_allclose(b, full.encode([text + "x"]), atol=1e-6)
    assert float(a[0] @ b[0]) < 0.9999, "the 64-token vector must not come from the 16 one"
    cache.close()


def test_a_folder_that_is_not_a_model_is_refused_before_hashing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import p4r.encoder.fingerprint as fingerprint

    junk = tmp_path / "not-a-model"
    (junk / "deep" / "deeper").mkdir(parents=True)
    (junk / "deep" / "deeper" / "big.bin").write_bytes(b"\0" * 1024)
    (junk / "weights.safetensors").write_bytes(b"\0" * 1024)

    def no_hashing(*args: object) -> str:
        raise AssertionError("hashed files of a folder that is not a model")

    monkeypatch.setattr(fingerprint, "_weights_hash", no_hashing)
    with pytest.raises(ConfigError, match="is a folder but not a model"):
        fingerprint_for(str(junk))


def test_locate_encoder_finds_the_recorded_source(tiny_models: dict[str, Path]) -> None:
    from p4r.encoder.factory import serving_encoder
    from p4r.encoder.model import Encoder
    from p4r.settings import EncoderSettings

    stored = fingerprint_for(str(tiny_models["b"]), 48)
    encoder = serving_encoder(EncoderSettings(), stored)  # configured: the default MiniLM
    assert isinstance(encoder, Encoder)
    found = encoder.settings
    assert found.model == stored.source and found.max_seq_length == 48
    assert fingerprint_for(found.model, found.max_seq_length) == stored
    moved = stored.__class__.from_dict({**stored.as_dict(), "source": "/nowhere/model"})
    with pytest.raises(ConfigError, match="P4R_ENCODER__MODEL=/nowhere/model"):
        serving_encoder(EncoderSettings(), moved)
