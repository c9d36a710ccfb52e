"""The serving-encoder factory (torch side; the ONNX side is in test_onnx_serving.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p4r.encoder.factory import serving_encoder
from p4r.encoder.fingerprint import fingerprint_for
from p4r.encoder.model import Encoder
from p4r.errors import ConfigError
from p4r.settings import EncoderSettings


def test_without_an_index_the_configured_encoder_is_used(tiny_models: dict[str, Path]) -> None:
    settings = EncoderSettings(model=str(tiny_models["a"]), max_seq_length=32)
    encoder = serving_encoder(settings, None)
    assert isinstance(encoder, Encoder) and encoder.settings == settings
    assert encoder.fingerprint == fingerprint_for(str(tiny_models["a"]), 32)


def test_the_configured_model_wins_when_it_matches(tiny_models: dict[str, Path],
                                                   tmp_path: Path) -> None:
    import shutil

    copy = shutil.copytree(tiny_models["a"], tmp_path / "copy")  # same weights, other folder
    stored = fingerprint_for(str(tiny_models["a"]))
    encoder = serving_encoder(EncoderSettings(model=str(copy)), stored)
    assert isinstance(encoder, Encoder) and encoder.settings.model == str(copy)
    assert stored.accepts(encoder.fingerprint)


def test_no_matching_encoder_names_the_setting(tiny_models: dict[str, Path]) -> None:
    stored = fingerprint_for(str(tiny_models["b"]))
    moved = stored.__class__.from_dict({**stored.as_dict(), "source": None})
    with pytest.raises(ConfigError, match="set P4R_ENCODER__MODEL and "
                                          "P4R_ENCODER__MAX_SEQ_LENGTH=64"):
        serving_encoder(EncoderSettings(model=str(tiny_models["a"])), moved,
                        index_name="p4r_demo_personas")
