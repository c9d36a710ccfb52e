"""Backends by name: each engine registers how to open itself, and one factory picks it.

The backend is chosen once, from the settings (``P4R_BACKEND``) or the command line, the way
``QdrantClient`` chooses local or remote in its constructor; nothing downstream asks which
engine it has. Adding an engine is one :class:`~p4r.store.base.Backend` subclass and one
:func:`register_backend` call (plus its name in ``p4r.settings.BackendName``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

from p4r.errors import ConfigError
from p4r.settings import BackendName, Settings
from p4r.store.base import Backend

Opener = Callable[[Settings, Any], Backend]


@dataclass(frozen=True)
class BackendEntry:
    """One registered engine: its name, a line for ``--help``, and how to open it."""

    name: str
    help: str
    open: Opener


_BACKENDS: dict[str, BackendEntry] = {}


def register_backend(name: str, help: str) -> Callable[[Opener], Opener]:
    """Register ``opener(settings, client)`` as the engine called ``name``."""
    if name not in get_args(BackendName):
        raise ValueError(f"backend {name!r} is not a p4r.settings.BackendName")

    def register(opener: Opener) -> Opener:
        _BACKENDS[name] = BackendEntry(name, help, opener)
        return opener

    return register


def backends() -> list[BackendEntry]:
    """Every registered engine, in registration order."""
    return list(_BACKENDS.values())


def open_backend(settings: Settings, *, client: Any = None) -> Backend:
    """Open the engine the settings choose.

    Args:
        settings: p4r settings (``backend``, ``data_dir``, ``qdrant``, ``index``).
        client: an existing engine client to open the backend on (a ``QdrantClient`` for the
            ``server`` backend), for applications that already hold one.
    """
    entry = _BACKENDS.get(settings.backend)
    if entry is None:
        names = ", ".join(_BACKENDS)
        raise ConfigError(f"unknown backend {settings.backend!r} (P4R_BACKEND must be one of "
                          f"{names})")
    return entry.open(settings, client)
