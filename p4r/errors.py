"""Errors that carry enough context for a one-line, actionable message.

Every text an error shows is passed through :func:`mask_credentials`, so a secret inside a
URL (userinfo or query string) never reaches a terminal, a log or an HTTP body.
:func:`public_message` goes further for anonymous HTTP clients: it also hides where the
service's backends and files live.
"""

from __future__ import annotations

import errno
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

# ``scheme://user:password@host``: everything between ``//`` and the last ``@`` before the
# path is userinfo. Greedy up to that ``@`` so a raw ``@`` inside a password is masked too.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*(?:@[^/\s@]*)*@")

# Words that make a query parameter (``?api-key=``, ``&access_token=``, ``#token=``) or a
# header-like ``name: value`` a credential. Over-masking a harmless parameter costs nothing;
# missing a spelling leaks a key, so this matches any name that *contains* one of them.
_SECRET_WORDS = r"(?:key|token|secret|passw(?:or)?d|pwd|auth|signature|sig|credential|session)"
_QUERY_SECRET = re.compile(
    rf"(?P<name>[?&;#][^=&#;\s]*{_SECRET_WORDS}[^=&#;\s]*=)[^&#;\s'\"]*", re.IGNORECASE)
# A token after ``Bearer``/``Basic``; it must hold a digit or a symbol, so English such as
# "Basic authentication failed" is left alone.
_BEARER = re.compile(r"\b(?P<scheme>Bearer|Basic)\s+(?=[A-Za-z]*[0-9._~+/=-])"
                     r"[A-Za-z0-9._~+/=-]{4,}", re.IGNORECASE)
MASK = "***"


def mask_credentials(text: str) -> str:
    """Mask every credential a URL or header can carry in ``text``; keep what locates it.

    Replaces URL userinfo (``http://***@host``), the value of any query or fragment parameter
    whose name contains a secret word (``?api-key=***``, ``&access_token=***``,
    ``?password=***``) and ``Bearer``/``Basic`` tokens. Scheme, host, port and path stay, so
    the message still says which server was meant.
    """
    if "@" in text:
        text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(rf"\g<name>{MASK}", text)
    return _BEARER.sub(rf"\g<scheme> {MASK}", text)


def first_line(exc: BaseException) -> str:
    """An exception's first line of text, or its class name when it has none: what a one-line
    error shows of an engine's or a library's multi-line message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class P4RError(Exception):
    """Base class for every error p4r raises on purpose; its text never shows URL secrets.

    ``request_index`` names the request of a batch the error belongs to, when it does.
    """

    request_index: int | None = None

    def __str__(self) -> str:
        return mask_credentials(super().__str__())

    def __repr__(self) -> str:  # reprs end up in logs and debuggers: mask them as well
        return f"{type(self).__name__}({str(self)!r})"


class InputError(P4RError):
    """Bad input data: says which file, which line and which field (and, in a batch, which
    request: ``request_index``)."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        request_index: int | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.message = message
        self.request_index = request_index
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        parts = [p for p in (where, f"field '{self.field}'" if self.field else "") if p]
        prefix = ": ".join(parts)
        return mask_credentials(f"{prefix}: {self.message}" if prefix else self.message)


class ConfigError(P4RError):
    """A setting is missing, invalid or inconsistent with what is stored."""


class BackendError(P4RError):
    """The vector store failed or could not be reached."""


class StorageFullError(BackendError):
    """A write failed because the file system holding ``path`` is full (or over quota).

    One class for every write path (atomic file writes, the event log, the embedding and LLM
    caches), so the CLI prints one line and the HTTP layer can answer 507 instead of 500.
    """

    def __init__(self, path: str | Path, what: str = "") -> None:
        self.path = str(path)
        detail = f" ({what})" if what else ""
        super().__init__(f"{self.path}: no space left on the device{detail}; free some space "
                         "(or raise the quota) and run it again")


class NotFoundError(P4RError):
    """A dataset, collection, user or item does not exist."""


class UnknownUserError(NotFoundError):
    """A user id has no interactions in the served version (callers can name where it came
    from, e.g. the line of a candidates file)."""

    def __init__(self, message: str, *, user_id: str) -> None:
        super().__init__(message)
        self.user_id = user_id


class ForgottenUserError(InputError):
    """The user was forgotten: nothing of theirs is recorded again."""


class NotIndexedError(NotFoundError):
    """A dataset has no published version in the store (yet)."""


class LockedError(BackendError):
    """Another process holds the store's writer lock."""


class DamagedStoreError(BackendError):
    """A stored file or collection is unreadable or does not hold what was recorded."""


# -- full disks ---------------------------------------------------------------------------------
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13  # SQLITE_FULL: what sqlite answers when a write meets ENOSPC


def is_storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the quota) is full: ``ENOSPC``/``EDQUOT`` from the OS,
    ``SQLITE_FULL`` from sqlite."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF == _SQLITE_FULL
        return "database or disk is full" in str(exc)
    return False


# -- messages for anonymous clients ------------------------------------------------------------
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# gRPC and socket errors name peers without a scheme: ``ipv4:10.0.0.5:6334``, ``[::1]:6333``.
_PEER = re.compile(
    r"(?:\bipv[46]:)?(?:\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?"
    r"|\blocalhost(?::\d{1,5})?\b)")
# An absolute POSIX path: ``/`` after a space, quote, bracket or the start, then components.
_ABS_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"<>():]+/)*(?P<last>[^\s/'\"<>():]+)/?")


def _hosts_of(urls: Iterable[str]) -> list[str]:
    """``host:port`` then ``host`` of each URL, longest first, so a port goes with its host."""
    found: set[str] = set()
    for url in urls:
        try:
            parts = urlsplit(url if "://" in url else f"//{url}")
            host, port = parts.hostname, parts.port
        except ValueError:
            continue
        if host:
            found.add(host)
            if port is not None:
                found.add(f"{host}:{port}")
    return sorted(found, key=len, reverse=True)


def public_message(exc: BaseException, *, hide: Iterable[str] = (),
                   placeholder: str = "<qdrant>") -> str:
    """The message an anonymous client may read: the CLI's sentence, without locations.

    Credentials are masked as everywhere; then every URL becomes ``placeholder``, IP
    addresses, ``localhost`` and the hosts of the URLs in ``hide`` (e.g. the configured
    ``P4R_QDRANT__URL``) become ``<host>``, and absolute paths shrink to their last
    component. An error p4r did not raise on purpose says only its class: its text may hold
    anything.

    Args:
        exc: the error to describe.
        hide: URLs or ``host[:port]`` strings whose host names must not show.
        placeholder: what a URL is replaced with.

    Returns:
        One line safe to send in a 5xx body.
    """
    if not isinstance(exc, P4RError):
        return f"internal error ({type(exc).__name__}); the server log has the details"
    text = _URL.sub(placeholder, str(exc))
    for host in _hosts_of(hide):
        text = re.sub(rf"(?<![\w.-]){re.escape(host)}(?![\w-])", "<host>", text)
    text = _PEER.sub("<host>", text)
    return _ABS_PATH.sub(lambda m: m.group("last"), text)
