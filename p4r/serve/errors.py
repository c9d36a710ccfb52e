"""p4r errors as HTTP answers: a status and a code per error class, the CLI's one-line message.

Every error body is ``{"error": {"code", "message", "request_index"?, "field"?}}``. A 4xx
message is what the CLI prints after ``Error:`` (credentials masked, as everywhere). A 5xx
message goes to clients that may be anonymous, so it is built with
:func:`~p4r.errors.public_message`: no host, port, path or secret of the service.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from p4r.errors import (
    BackendError,
    ConfigError,
    ForgottenUserError,
    InputError,
    NotFoundError,
    NotIndexedError,
    P4RError,
    StorageFullError,
    UnknownUserError,
    public_message,
)
from p4r.query import UnknownCandidatesError


class ServeError(P4RError):
    """An error the HTTP layer raises itself, with its status, code and optional headers."""

    status = 500
    code = "internal"
    request_index: int | None = None

    def __init__(self, message: str, *, field: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.headers = dict(headers or {})


class NotReadyError(ServeError):
    """This process serves no version: the dataset is not indexed, its version was removed,
    or it failed to load (``code`` says which)."""

    status = 503

    def __init__(self, message: str, code: str = "unavailable") -> None:
        super().__init__(message)
        self.code = code


class VersionGoneError(ServeError):
    """The served version's collections were removed (``p4r index prune`` or ``drop``) before
    this process moved on; it reloads at once."""

    status = 503
    code = "version_gone"


class TooLargeError(ServeError):
    """A request over a size limit (body bytes, or a count or length setting)."""

    status = 413
    code = "payload_too_large"


class BusyError(ServeError):
    """A bounded queue (encoding work) is full: try again shortly."""

    status = 429
    code = "too_many_requests"


class AuthError(ServeError):
    """No key, or a wrong one, where a key is needed."""

    status = 401
    code = "unauthorized"


class ForbiddenError(ServeError):
    """A valid key that may not do this (a read-only key on a write), or writes disabled."""

    status = 403
    code = "forbidden"


class UntrustedHostError(ServeError):
    """A ``Host`` header outside ``P4R_SERVE__TRUSTED_HOSTS`` (DNS rebinding)."""

    status = 400
    code = "untrusted_host"


# Looked up along the exception's MRO, so a subclass answers with its own status when it has
# one (NotIndexedError is a NotFoundError that means "not yet", hence 503, not 404).
_BY_CLASS: dict[type[BaseException], tuple[int, str]] = {
    UnknownCandidatesError: (400, "unknown_candidates"),
    ForgottenUserError: (409, "forgotten_user"),
    InputError: (400, "bad_input"),
    UnknownUserError: (404, "unknown_user"),
    NotIndexedError: (503, "not_indexed"),
    NotFoundError: (404, "not_found"),
    StorageFullError: (507, "storage_full"),
    ConfigError: (503, "unavailable"),
    BackendError: (503, "unavailable"),
}


def status_and_code(exc: BaseException) -> tuple[int, str]:
    """HTTP status and error code of an error (500 ``internal`` for anything unexpected)."""
    if isinstance(exc, ServeError):
        return exc.status, exc.code
    for cls in type(exc).__mro__:
        found = _BY_CLASS.get(cls)
        if found is not None:
            return found
    return 500, "internal"


def error_body(exc: BaseException, *, hide: Iterable[str] = ()) -> tuple[int, dict[str, Any]]:
    """The status and JSON body answering ``exc``.

    Args:
        exc: the error.
        hide: URLs whose hosts a 5xx message must not name (the configured Qdrant URL).
    """
    status, code = status_and_code(exc)
    message = public_message(exc, hide=hide) if status >= 500 else str(exc)
    detail: dict[str, Any] = {"code": code, "message": message}
    index = getattr(exc, "request_index", None)
    if index is not None:
        detail["request_index"] = index
    field = getattr(exc, "field", None)
    if field:
        detail["field"] = field
    if isinstance(exc, UnknownCandidatesError):
        detail["unknown"] = exc.unknown
    return status, {"error": detail}


def simple_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """An error body for failures that are not p4r errors (routing, protocol)."""
    return {"error": {"code": code, "message": message, **extra}}


_UNION_TAGS = {"one", "batch"}  # variant names of tagged unions, not fields


def field_path(loc: Sequence[str | int]) -> str:
    """``("body", "requests", 0, "candidates")`` → ``requests[0].candidates``."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path") else list(loc)
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part not in _UNION_TAGS:
            text += f".{part}" if text else str(part)
    return text


# Validation failures that are about size, not shape: answered 413 like the limits.
_TEXT_FIELDS = {"text", "summary"}


def validation_error(errors: Sequence[Mapping[str, Any]]) -> tuple[int, dict[str, Any]]:
    """Status and body for a request that failed validation: 422 ``bad_input`` with the
    CLI's ``field '...': ...`` line; 400 for invalid Unicode (the rule every id follows);
    413 ``payload_too_large`` for a list or text over the schema's bound."""
    if not errors:
        return 422, simple_body("bad_input", "invalid request")
    first = errors[0]
    kind = str(first.get("type", ""))
    message = str(first.get("msg", "invalid value"))
    loc = first.get("loc", ())
    field: str | None
    if kind == "json_invalid":
        error = (first.get("ctx") or {}).get("error", "")
        message = f"request body is not valid JSON ({error})" if error else message
        field = None
    else:
        field = field_path(loc) or None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    line = str(InputError(message + more, field=field))
    status, code = 422, "bad_input"
    if kind == "invalid_unicode":
        status = 400
    elif kind == "too_long" or (kind == "string_too_long" and loc and loc[-1] in _TEXT_FIELDS):
        status, code = 413, "payload_too_large"
    body = simple_body(code, line)
    if field:
        body["error"]["field"] = field
    index = _request_index(loc)
    if index is not None:
        body["error"]["request_index"] = index
    return status, body


def _request_index(loc: Sequence[str | int]) -> int | None:
    """The batch position in ``("body", "requests", 2, ...)``."""
    parts = list(loc)
    for i, part in enumerate(parts[:-1]):
        if part == "requests" and isinstance(parts[i + 1], int):
            return int(parts[i + 1])
    return None
