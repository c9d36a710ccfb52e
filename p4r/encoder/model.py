"""Sentence-transformers encoder (inference). Imports torch only when first used."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from p4r.encoder.fingerprint import Fingerprint, fingerprint_for, resolve_model_path
from p4r.errors import ConfigError
from p4r.settings import EncoderSettings


class Encoder:
    """Encodes texts to unit float32 vectors with the configured sentence-transformers model."""

    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        self.fingerprint: Fingerprint = fingerprint_for(settings.model, settings.max_seq_length)
        self._model: Any = None

    @property
    def dim(self) -> int:
        """Embedding width."""
        return self.fingerprint.dim

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        # Never reach for the hub at run time; a missing model is a configuration error.
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
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        path = resolve_model_path(self.settings.model)
        model = SentenceTransformer(str(path), device=self.settings.device)
        # The length the fingerprint records is the length used: one truth for both.
        if self.fingerprint.max_seq_length:
            model.max_seq_length = self.fingerprint.max_seq_length
        get_dim = getattr(model, "get_embedding_dimension", None)
        if get_dim is None:
            get_dim = model.get_sentence_embedding_dimension
        if get_dim() != self.fingerprint.dim:
            raise ConfigError(
                f"encoder at {path} produces {get_dim()}-d vectors but its config says "
                f"{self.fingerprint.dim}"
            )
        self._model = model
        return model

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Return an ``(n, dim)`` float32 array of L2-normalised embeddings."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        import torch

        use_bf16 = self.settings.precision == "bf16"
        with torch.inference_mode(), torch.autocast(
            device_type=model.device.type, dtype=torch.bfloat16, enabled=use_bf16
        ):
            vectors = model.encode(
                list(texts),
                batch_size=batch_size or self.settings.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)
