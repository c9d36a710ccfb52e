"""The one factory for the encoder that embeds text at query time (history requests, live
interactions): it finds the encoder an index was built with and refuses any other.

Building the encoder reads files only (fingerprints, the ONNX manifest); torch or
onnxruntime are loaded on the first ``encode``, so calling this factory never imports torch.
"""

from __future__ import annotations

from p4r.encoder.base import TextEncoder
from p4r.encoder.fingerprint import Fingerprint, locate_encoder
from p4r.encoder.model import Encoder
from p4r.encoder.serving import OnnxEncoder
from p4r.errors import ConfigError
from p4r.settings import EncoderSettings


def serving_encoder(settings: EncoderSettings, index: Fingerprint | None, *,
                    index_name: str = "the index") -> TextEncoder:
    """The encoder that reproduces the vectors of an index built with ``index``.

    With ``backend="onnx"`` the configured export is used. Otherwise the configured model is
    used when it matches ``index``, else the folder the index recorded
    (``index.source``), at the sequence length the index recorded. Without a recorded
    fingerprint (``index`` None) the configured encoder is returned as is.

    Args:
        settings: the ``P4R_ENCODER__*`` settings.
        index: the fingerprint the served index recorded (None: nothing to match).
        index_name: how error messages name the index (e.g. its personas collection).

    Raises:
        ConfigError: no encoder here matches ``index``; the message names the setting to
            change.

    Example::

        encoder = serving_encoder(settings.encoder, manifest.fingerprint,
                                  index_name="p4r_demo_personas")
        vectors = encoder.encode(["Great fish, quiet room."])  # loads the model here
    """
    encoder: TextEncoder
    if settings.backend == "onnx":  # torch-free serving
        encoder = OnnxEncoder(settings=settings)
        setting = "P4R_ENCODER__ONNX_PATH to an export of the indexing encoder"
    else:
        encoder = Encoder(_settings_for(index, settings))
        setting = "P4R_ENCODER__MODEL to the indexing encoder"
    # Always checked: text embedded by another encoder would rank garbage.
    if index is not None and not index.accepts(encoder.fingerprint):
        raise ConfigError(
            f"encoder fingerprint mismatch: {index_name} was built with {index.short()}, but "
            f"the configured encoder is {encoder.fingerprint.short()}; set {setting} or "
            "re-index with this one")
    return encoder


def _settings_for(index: Fingerprint | None, settings: EncoderSettings) -> EncoderSettings:
    """Torch settings that reproduce ``index``: the configured model if it matches, else the
    recorded folder, at the recorded length (a ConfigError says what to set otherwise)."""
    if index is None:
        return settings
    model = locate_encoder(index, settings.model, settings.max_seq_length)
    return settings.model_copy(update={
        "model": model, "max_seq_length": index.max_seq_length or settings.max_seq_length})
