"""Torch-free encoder for serving: an ONNX export run by fastembed (onnxruntime + tokenizers).

The folder comes from :func:`p4r.encoder.onnx_export.export_onnx`; its manifest carries the
fingerprint of the source sentence-transformers model, so an index built with the torch
:class:`~p4r.encoder.model.Encoder` accepts this encoder. Nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from p4r.encoder.base import BaseEncoder
from p4r.encoder.fingerprint import Fingerprint, fingerprint_for, with_length
from p4r.errors import ConfigError
from p4r.settings import EncoderSettings

MANIFEST_NAME = "p4r_onnx.json"
MODEL_FILE = "model.onnx"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class OnnxManifest:
    """What an export records: the source fingerprint and how to turn tokens into a vector."""

    fingerprint: Fingerprint
    dim: int
    max_seq_length: int
    pooling: str = "mean"
    normalize: bool = True
    model_file: str = MODEL_FILE
    output_name: str = "last_hidden_state"

    def as_dict(self, **extra: Any) -> dict[str, Any]:
        """JSON form written next to the model (``extra`` adds informative keys)."""
        return {"format": MANIFEST_FORMAT, "fingerprint": self.fingerprint.as_dict(),
                "dim": self.dim, "max_seq_length": self.max_seq_length,
                "pooling": self.pooling, "normalize": self.normalize,
                "model_file": self.model_file, "output_name": self.output_name, **extra}

    @classmethod
    def read(cls, folder: Path) -> OnnxManifest:
        """Load and check the manifest of an export folder; a ConfigError says what is wrong."""
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise ConfigError(
                f"{folder} is not a p4r ONNX export (no {MANIFEST_NAME}); create one with "
                "p4r.encoder.onnx_export.export_onnx"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            fingerprint = Fingerprint.from_dict(data["fingerprint"])
            if fingerprint.max_seq_length is None:  # exported before lengths were recorded
                fingerprint = replace(fingerprint, max_seq_length=int(data["max_seq_length"]))
            manifest = cls(fingerprint=fingerprint,
                           dim=int(data["dim"]), max_seq_length=int(data["max_seq_length"]),
                           pooling=str(data.get("pooling", "mean")),
                           normalize=bool(data.get("normalize", True)),
                           model_file=str(data.get("model_file", MODEL_FILE)),
                           output_name=str(data.get("output_name", "last_hidden_state")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"unreadable ONNX manifest {path}: {exc}") from None
        if int(data.get("format", 0)) != MANIFEST_FORMAT:
            raise ConfigError(f"{path} has manifest format {data.get('format')!r}, this p4r "
                              f"reads {MANIFEST_FORMAT}; re-export the model")
        if manifest.pooling != "mean":
            raise ConfigError(f"{path}: pooling {manifest.pooling!r} is not supported (mean)")
        if not (folder / manifest.model_file).is_file():
            raise ConfigError(f"ONNX export {folder} lacks {manifest.model_file}")
        return manifest


def onnx_folder(settings: EncoderSettings) -> Path:
    """The export folder ``P4R_ENCODER__ONNX_PATH`` names, required when the backend is onnx."""
    if not settings.onnx_path:
        raise ConfigError("P4R_ENCODER__BACKEND=onnx needs P4R_ENCODER__ONNX_PATH (a folder "
                          "written by p4r.encoder.onnx_export.export_onnx)")
    return Path(settings.onnx_path).expanduser().resolve()


def configured_fingerprint(settings: EncoderSettings) -> Fingerprint:
    """Fingerprint of the encoder the settings select: the manifest's for onnx, else the model's."""
    if settings.backend == "onnx":
        manifest = OnnxManifest.read(onnx_folder(settings))
        return with_length(manifest.fingerprint, settings.max_seq_length)
    return fingerprint_for(settings.model, settings.max_seq_length)


class OnnxEncoder(BaseEncoder):
    """Encodes texts to unit float32 vectors with an ONNX export, without torch.

    Args:
        path: export folder (default: ``settings.onnx_path``).
        settings: threads, batch size and the ``max_seq_length`` cap, as for the torch encoder.
    """

    declared_by = "its manifest"

    def __init__(self, path: str | Path | None = None,
                 settings: EncoderSettings | None = None) -> None:
        self.settings = settings or EncoderSettings(backend="onnx")
        self.path = (Path(path).expanduser().resolve() if path is not None
                     else onnx_folder(self.settings))
        self.manifest = OnnxManifest.read(self.path)
        cap = self.settings.max_seq_length
        # The torch encoder truncates at min(setting, model); do the same so vectors agree.
        self.max_seq_length = min(self.manifest.max_seq_length, cap or self.manifest.max_seq_length)
        super().__init__(with_length(self.manifest.fingerprint, self.max_seq_length),
                         batch_size=self.settings.batch_size,
                         label=f"ONNX encoder at {self.path}", dim=self.manifest.dim)

    def _load(self) -> Any:
        """Register the export with fastembed as a local custom model and open it (no download)."""
        try:
            from fastembed import TextEmbedding
            from fastembed.common.model_description import ModelSource, PoolingType
        except ImportError:
            raise ConfigError("the onnx encoder backend needs fastembed and onnxruntime: "
                              "pip install fastembed onnxruntime") from None
        # fastembed keys custom models by name in a process-wide registry; the name only has to
        # be unique per (weights, dim, file, output), the folder is given per instance below.
        name = (f"p4r-local/{self.fingerprint.weights_sha256[:16]}-{self.dim}-"
                f"{Path(self.manifest.model_file).stem}-{self.manifest.output_name}")
        known = {m["model"].lower() for m in TextEmbedding.list_supported_models()}
        if name.lower() not in known:
            # sources is mandatory but never read: specific_model_path short-circuits download.
            TextEmbedding.add_custom_model(
                model=name, pooling=PoolingType.MEAN, normalization=True,
                sources=ModelSource(hf=name), dim=self.dim,
                model_file=self.manifest.model_file, output_name=self.manifest.output_name,
                description=f"p4r export of {self.fingerprint.model}")
        try:
            model = TextEmbedding(model_name=name, specific_model_path=str(self.path),
                                  cache_dir=str(self.path), local_files_only=True,
                                  threads=self.settings.threads,
                                  cuda=self.settings.device.startswith("cuda"))
        except Exception as exc:
            raise ConfigError(f"cannot load the ONNX encoder at {self.path}: {exc}") from None
        if self.max_seq_length < self.manifest.max_seq_length:
            tokenizer = getattr(getattr(model, "model", None), "tokenizer", None)
            if tokenizer is None:
                raise ConfigError(
                    f"cannot cap the ONNX encoder at {self.max_seq_length} tokens; re-export "
                    f"with max_seq_length={self.max_seq_length}"
                )
            tokenizer.enable_truncation(max_length=self.max_seq_length)
        return model

    def _embed(self, model: Any, texts: list[str], batch_size: int) -> np.ndarray:
        # Longest first, like sentence-transformers: batches of similar length pad less.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        stacked = np.stack(list(model.embed([texts[i] for i in order], batch_size=batch_size)))
        vectors = np.empty(stacked.shape, dtype=np.float32)
        vectors[order] = stacked
        return vectors
