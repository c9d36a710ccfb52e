"""The store: engines behind one ``Backend`` interface, and the lifecycle of catalog versions.

``open_backend(settings)`` picks the engine once (``edge`` embedded, ``server`` for a Qdrant
server or cluster, possibly on a client the caller already holds).
"""

from __future__ import annotations

from p4r.store import edge as _edge  # noqa: F401 - registers the engine
from p4r.store import server as _server  # noqa: F401 - registers the engine
from p4r.store.base import Backend, CollectionSpec, GroupAnswer, GroupHit, Record
from p4r.store.registry import backends, open_backend, register_backend

__all__ = ["Backend", "CollectionSpec", "GroupAnswer", "GroupHit", "Record", "backends",
           "open_backend", "register_backend"]
