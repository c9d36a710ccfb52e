"""Text templates, the :class:`TextEncoder` protocol and its encoders (torch, ONNX, trained
head), the serving-encoder factory, training and user-profile aggregation (no Qdrant here).

Importing this package does not import torch; the encoders load it on first use.
"""

from p4r.encoder.base import TextEncoder
from p4r.encoder.fingerprint import Fingerprint, fingerprint_for
from p4r.encoder.profile import user_vector

__all__ = ["Fingerprint", "TextEncoder", "fingerprint_for", "user_vector"]
