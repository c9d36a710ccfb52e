"""Errors that carry enough context for a one-line, actionable message."""

from __future__ import annotations

import re
from pathlib import Path

# ``scheme://user:password@host``: everything between ``//`` and the last ``@`` before the
# path is userinfo. Greedy up to that ``@`` so a raw ``@`` inside a password is masked too.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*(?:@[^/\s@]*)*@")


def mask_credentials(text: str) -> str:
    """Replace the userinfo of every URL in ``text`` with ``***`` (keeps scheme and host)."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


class P4RError(Exception):
    """Base class for every error p4r raises on purpose; its text never shows URL secrets."""

    def __str__(self) -> str:
        return mask_credentials(super().__str__())


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
