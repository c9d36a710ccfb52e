"""Text templates, encoder loading and user-profile aggregation (no Qdrant here).

Importing this package does not import torch; :class:`Encoder` loads it on first use.
"""

from p4r.encoder.fingerprint import Fingerprint, fingerprint_for
from p4r.encoder.profile import user_vector

__all__ = ["Fingerprint", "fingerprint_for", "user_vector"]
