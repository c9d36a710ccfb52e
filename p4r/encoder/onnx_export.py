"""Export a sentence-transformers folder to ONNX for the torch-free serving encoder.

Only the Hugging Face transformer is exported (output ``last_hidden_state``); mean pooling and
L2 normalisation run in numpy at serving time (fastembed), as they do in
:class:`p4r.encoder.serving.OnnxEncoder`. Exporting needs torch, onnx and
sentence-transformers; serving the result needs none of them.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from p4r.encoder.fingerprint import fingerprint_for, resolve_model_path, with_length
from p4r.encoder.serving import MANIFEST_NAME, MODEL_FILE, OnnxManifest
from p4r.errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "config.json")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OUTPUT = "last_hidden_state"
DEFAULT_MODEL = "all-MiniLM-L6-v2"


def _linear_head(model: Any, names: list[str]) -> Any:
    """The weight of a bias-free, activation-free Dense after pooling (p4r-train's head), or
    None. Such a head commutes with mean pooling, so it is applied to every token in the graph.
    """
    if "Dense" not in names:
        return None
    dense = model[names.index("Dense")]
    activation = type(getattr(dense, "activation_function", None)).__name__
    if getattr(dense.linear, "bias", None) is not None or activation != "Identity" or getattr(
            dense, "use_residual", False):
        raise ConfigError("ONNX export supports a Dense layer only without bias, activation or "
                          "residual (a linear map commutes with mean pooling)")
    return dense.linear.weight.detach().clone()


def _check_layout(model: Any) -> tuple[Any, bool, Any]:
    """Return (transformer module, has Normalize, linear head weight or None); refuse layouts
    fastembed cannot reproduce."""
    names = [type(module).__name__ for module in model]
    tail = [n for n in names[2:] if n != "Normalize"]
    if names[:2] != ["Transformer", "Pooling"] or tail not in ([], ["Dense"]):
        raise ConfigError(
            f"ONNX export supports Transformer + Pooling(mean) [+ Dense] [+ Normalize] models; "
            f"this one is {' + '.join(names)} (merge LoRA adapters first)"
        )
    config = model[1].get_config_dict()
    mode = config.get("pooling_mode")
    if mode is None:  # sentence-transformers < 6 spells the mode as flags
        flags = [k for k, v in config.items() if k.startswith("pooling_mode_") and v]
        mode = "mean" if flags == ["pooling_mode_mean_tokens"] else ",".join(flags)
    if mode != "mean":
        raise ConfigError(f"ONNX export supports mean pooling only; this model pools by {mode}")
    transformer = model[0]
    if getattr(transformer, "do_lower_case", False):
        raise ConfigError("ONNX export cannot reproduce sentence-transformers' do_lower_case")
    return transformer, "Normalize" in names, _linear_head(model, names)


def _module_folder(model_dir: Path) -> Path:
    """Folder of the Transformer module (its tokenizer and config.json live there)."""
    modules = model_dir / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            if str(module.get("type", "")).endswith("Transformer"):
                return model_dir / module.get("path", "")
    return model_dir


def _copy_tokenizer(source: Path, out_dir: Path, max_seq_length: int) -> None:
    """Copy tokenizer files; fastembed truncates at tokenizer_config's model_max_length."""
    if not (source / "tokenizer.json").is_file():
        raise ConfigError(f"{source} has no tokenizer.json (a fast tokenizer is needed)")
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
    config_file = out_dir / "tokenizer_config.json"
    config = (json.loads(config_file.read_text(encoding="utf-8"))
              if config_file.is_file() else {})
    config["model_max_length"] = max_seq_length
    config.pop("max_length", None)  # fastembed takes the smaller of the two
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _fingerprint_name(model_dir: str | Path) -> str:
    """The settings value to fingerprint: the shipped MiniLM's folder counts as its alias.

    Fingerprints carry the ``P4R_ENCODER__MODEL`` string, so an index built with the default
    ``all-MiniLM-L6-v2`` must meet an export of that same name, not of its resolved folder.
    """
    name = str(model_dir)
    try:
        default = resolve_model_path(DEFAULT_MODEL)
    except ConfigError:
        return name
    return DEFAULT_MODEL if Path(name).expanduser().resolve() == default.resolve() else name


def export_onnx(model_dir: str | Path, out_dir: Path, opset: int = 17, *,
                max_seq_length: int | None = None) -> Path:
    """Write ``model.onnx``, tokenizer files and a p4r manifest for ``model_dir`` to ``out_dir``.

    Args:
        model_dir: sentence-transformers folder (Transformer + mean Pooling [+ Normalize]), or
            a name :func:`~p4r.encoder.fingerprint.resolve_model_path` resolves. Give the
            ``P4R_ENCODER__MODEL`` value the index was built with: it enters the fingerprint.
        out_dir: destination folder (created; an earlier export there is overwritten).
        opset: ONNX opset version.
        max_seq_length: optional cap below the model's own max_seq_length.

    Returns:
        ``out_dir``, ready for :class:`p4r.encoder.serving.OnnxEncoder`.
    """
    source = resolve_model_path(str(model_dir))
    fingerprint = fingerprint_for(_fingerprint_name(model_dir))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import onnx  # noqa: F401  (torch.onnx's exporter serialises through it)
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("ONNX export needs torch, onnx and sentence-transformers: "
                          "pip install torch==2.13.0 'p4r[encoder]' onnx") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    model = SentenceTransformer(str(source), device="cpu")
    transformer, normalized, head = _check_layout(model)
    own = model.max_seq_length or max_seq_length
    if not own:
        raise ConfigError(f"{source} sets no max_seq_length; pass max_seq_length to export_onnx")
    length = min(own, max_seq_length or own)
    hf_model = transformer.auto_model.eval()
    if hasattr(hf_model, "set_attn_implementation"):
        # SDPA's "no padding, skip the mask" shortcut would be baked into the trace.
        hf_model.set_attn_implementation("eager")
    accepted = inspect.signature(hf_model.forward).parameters
    inputs = [name for name in _INPUTS if name in accepted]

    class _LastHiddenState(torch.nn.Module):
        """Positional inputs in, token embeddings out: the graph fastembed runs."""

        def __init__(self) -> None:
            super().__init__()
            self.model = hf_model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            kwargs = dict(zip(inputs, tensors, strict=True))
            hidden = self.model(**kwargs, return_dict=True).last_hidden_state
            return hidden if head is None else hidden @ head.T

    # Trace with a padded row so the attention-mask path is exported, not skipped.
    ids = torch.full((2, 8), 1000, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    axes = {name: {0: "batch", 1: "sequence"} for name in [*inputs, _OUTPUT]}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # written last: its presence = complete
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and legacy-exporter chatter, not errors
        # The TorchScript exporter: the dynamo one would add onnxscript for no gain here.
        torch.onnx.export(
            _LastHiddenState(), tuple(example[name] for name in inputs),
            str(out_dir / MODEL_FILE), input_names=inputs, output_names=[_OUTPUT],
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    _copy_tokenizer(_module_folder(source), out_dir, length)
    manifest = OnnxManifest(fingerprint=with_length(fingerprint, length), dim=fingerprint.dim,
                            max_seq_length=length,
                            pooling="mean", normalize=True, model_file=MODEL_FILE,
                            output_name=_OUTPUT)
    extra = {"source": str(source), "source_normalize": normalized, "inputs": inputs,
             "opset": opset, "torch": torch.__version__,
             "transformers": transformers.__version__}
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest.as_dict(**extra), indent=2),
                                         encoding="utf-8")
    return out_dir
