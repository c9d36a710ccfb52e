"""Sentence-transformers encoder (inference), and the one way p4r opens such a model.

Torch is imported only when a model is first opened, so importing this module is cheap.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from p4r.encoder.base import BaseEncoder
from p4r.encoder.fingerprint import fingerprint_for, resolve_model_path
from p4r.errors import ConfigError
from p4r.settings import EncoderSettings


def import_torch(threads: int | None = None) -> tuple[Any, Any]:
    """``torch`` and the ``SentenceTransformer`` class, set up offline and quiet.

    Never reach for the hub at run time (a missing model is a configuration error), and keep
    transformers' progress bars and warnings out of p4r's output.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError(
            "encoding needs torch and sentence-transformers: pip install torch==2.13.0 "
            "'p4r[encoder]'"
        ) from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    return torch, SentenceTransformer


def open_sentence_transformer(model: str, *, device: str = "cpu",
                              max_seq_length: int | None = None,
                              threads: int | None = None) -> Any:
    """A local sentence-transformers model (never downloaded), truncating at
    ``max_seq_length`` when given: the encoder, both trainers and the head's saver use it."""
    _, sentence_transformer = import_torch(threads)
    loaded = sentence_transformer(str(resolve_model_path(model)), device=device)
    if max_seq_length:
        loaded.max_seq_length = max_seq_length
    return loaded


class Encoder(BaseEncoder):
    """Encodes texts to unit float32 vectors with the configured sentence-transformers model."""

    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        super().__init__(fingerprint_for(settings.model, settings.max_seq_length),
                         batch_size=settings.batch_size, label=f"encoder {settings.model}")

    def _load(self) -> Any:
        # The length the fingerprint records is the length used: one truth for both.
        model = open_sentence_transformer(self.settings.model, device=self.settings.device,
                                          max_seq_length=self.fingerprint.max_seq_length,
                                          threads=self.settings.threads)
        get_dim = getattr(model, "get_embedding_dimension", None)
        if get_dim is None:
            get_dim = model.get_sentence_embedding_dimension
        if get_dim() != self.fingerprint.dim:
            raise ConfigError(
                f"encoder at {resolve_model_path(self.settings.model)} produces {get_dim()}-d "
                f"vectors but its config says {self.fingerprint.dim}"
            )
        return model

    def _embed(self, model: Any, texts: list[str], batch_size: int) -> np.ndarray:
        import torch

        use_bf16 = self.settings.precision == "bf16"
        with torch.inference_mode(), torch.autocast(
            device_type=model.device.type, dtype=torch.bfloat16, enabled=use_bf16
        ):
            vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)
