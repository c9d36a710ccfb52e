"""The store: engines behind one ``Backend`` interface, and the lifecycle of catalog versions.

``open_backend(settings)`` picks the engine once (``edge`` embedded, ``server`` for a Qdrant
server or cluster, possibly on a client the caller already holds).
"""

from __future__ import annotations

from typing import Any

from p4r.settings import Settings
from p4r.store import edge as _edge  # noqa: F401 - registers the engine
from p4r.store.base import Backend, CollectionSpec, GroupAnswer, GroupHit, Record
from p4r.store.registry import backends, open_backend, register_backend


@register_backend("server", "a Qdrant server or cluster at P4R_QDRANT__URL")
def _open_server(settings: Settings, client: Any = None) -> Backend:
    """Import the server engine when one is opened: qdrant-client costs a process ~120 MB of
    RSS and ~1.3 s to import (measured), which an embedded store never needs. Importing
    ``p4r.store.server`` registers the same opener under the same name."""
    from p4r.store.server import open_server

    return open_server(settings, client)


__all__ = ["Backend", "CollectionSpec", "GroupAnswer", "GroupHit", "Record", "backends",
           "open_backend", "register_backend"]
