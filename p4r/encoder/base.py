"""The one text-encoder contract, and the base class its implementations share.

The torch :class:`~p4r.encoder.model.Encoder`, the torch-free
:class:`~p4r.encoder.serving.OnnxEncoder` and the trained
:class:`~p4r.encoder.head.HeadEncoder` all implement :class:`TextEncoder`; indexing and
serving depend on the protocol only. Nothing here imports torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from p4r.encoder.fingerprint import Fingerprint
from p4r.errors import ConfigError

Embed = Callable[[Sequence[str]], np.ndarray]
"""A function from texts to an ``(n, dim)`` array of unit rows (``TextEncoder.encode`` is one)."""


@runtime_checkable
class TextEncoder(Protocol):
    """Turns texts into unit float32 vectors, and says which encoder it is.

    ``fingerprint`` is what an index records and what a query must match (weights, dimension,
    template, sequence length).
    """

    fingerprint: Fingerprint

    @property
    def dim(self) -> int:
        """Embedding width."""
        ...

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 array of L2-normalised rows."""
        ...


class BaseEncoder(ABC):
    """What every encoder does the same way: load on first use, answer empty input without
    loading, and check the output's shape.

    Subclasses say how to open their model (:meth:`_load`) and how to embed a non-empty list
    (:meth:`_embed`); ``label`` and ``declared_by`` only word the error messages.
    """

    declared_by = "its config"

    def __init__(self, fingerprint: Fingerprint, *, batch_size: int, label: str,
                 dim: int | None = None) -> None:
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.label = label
        self._dim = dim or fingerprint.dim
        self._model: Any = None

    @property
    def dim(self) -> int:
        """Embedding width (the fingerprint's, unless the subclass declares its own)."""
        return self._dim

    def model(self) -> Any:
        """The loaded model (opened on the first call only)."""
        if self._model is None:
            self._model = self._load()
        return self._model

    @abstractmethod
    def _load(self) -> Any:
        """Open the model; a missing dependency or a bad folder is a ConfigError."""

    @abstractmethod
    def _embed(self, model: Any, texts: list[str], batch_size: int) -> np.ndarray:
        """Unit vectors of ``texts`` (never empty), one row per text."""

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Return an ``(n, dim)`` float32 array of L2-normalised embeddings."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._embed(self.model(), list(texts), batch_size or self.batch_size)
        if vectors.ndim != 2 or vectors.shape != (len(texts), self.dim):
            width = vectors.shape[-1] if vectors.ndim else 0
            raise ConfigError(f"{self.label} produced {width}-d vectors, "
                              f"{self.declared_by} says {self.dim}")
        return np.asarray(vectors, dtype=np.float32)
