"""Collection specs, naming, and the ``edge`` / ``server`` backends behind one interface."""

from __future__ import annotations

from p4r.collections.base import Backend, CollectionSpec, GroupHit, Record
from p4r.settings import Settings

__all__ = ["Backend", "CollectionSpec", "GroupHit", "Record", "open_backend"]


def open_backend(settings: Settings, kind: str | None = None) -> Backend:
    """The backend the settings (or ``kind``) choose: ``edge`` in-process, or ``server``."""
    kind = kind or settings.backend
    if kind == "edge":
        from p4r.collections.edge import EdgeBackend

        return EdgeBackend(settings.data_dir / "edge")
    if kind == "server":
        from p4r.collections.server import ServerBackend, connect

        return ServerBackend(connect(settings.qdrant), url=settings.qdrant.url)
    from p4r.errors import ConfigError

    raise ConfigError(f"unknown backend {kind!r} (P4R_BACKEND must be 'edge' or 'server')")
