"""The TextEncoder contract and the base class every encoder shares (no model loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p4r.encoder.base import BaseEncoder, TextEncoder
from p4r.encoder.fingerprint import Fingerprint
from p4r.errors import ConfigError

FP = Fingerprint(model="fake", weights_sha256="0" * 64, dim=4, max_seq_length=16)


class _Fake(BaseEncoder):
    """Counts loads; returns ``width``-d unit rows."""

    def __init__(self, width: int = 4) -> None:
        super().__init__(FP, batch_size=7, label="fake encoder")
        self.width, self.loads, self.batches = width, 0, []

    def _load(self) -> Any:
        self.loads += 1
        return "model"

    def _embed(self, model: Any, texts: list[str], batch_size: int) -> np.ndarray:
        self.batches.append(batch_size)
        return np.eye(len(texts), self.width, dtype=np.float64)


def test_empty_input_needs_no_model() -> None:
    encoder = _Fake()
    out = encoder.encode([])
    assert out.shape == (0, 4) and out.dtype == np.float32 and encoder.loads == 0


def test_loads_once_defaults_the_batch_size_and_returns_float32() -> None:
    encoder = _Fake()
    first = encoder.encode(["a", "b"])
    encoder.encode(["c"], batch_size=2)
    assert encoder.loads == 1 and encoder.batches == [7, 2]
    assert first.dtype == np.float32 and first.shape == (2, encoder.dim) and encoder.dim == 4


def test_a_wrong_width_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="fake encoder produced 3-d vectors, its config says 4"):
        _Fake(width=3).encode(["a"])


def test_every_encoder_implements_the_protocol(tiny_encoder, tiny_models: dict[str, Path]  # type: ignore[no-untyped-def]
                                               ) -> None:
    from p4r.encoder.head import HeadEncoder

    head = HeadEncoder(tiny_encoder.encode, np.eye(32, dtype=np.float32),
                       tiny_encoder.fingerprint)
    for encoder in (_Fake(), tiny_encoder, head):
        assert isinstance(encoder, TextEncoder)
    texts = ["quiet tables", "fiery ramen"]
    np.testing.assert_allclose(head.encode(texts), tiny_encoder.encode(texts), atol=1e-6)
