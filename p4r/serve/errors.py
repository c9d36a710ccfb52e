"""p4r errors as HTTP answers: a status per error class and the CLI's one-line message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from p4r.errors import (
    BackendError,
    ConfigError,
    InputError,
    NotFoundError,
    NotIndexedError,
    P4RError,
)
from p4r.query import UnknownCandidatesError


class NotReadyError(P4RError):
    """This process serves no version yet: the dataset is not indexed or failed to load."""


# Looked up along the exception's MRO, so a subclass answers with its own status when it has
# one (NotIndexedError is a NotFoundError that means "not yet", hence 503, not 404).
STATUS: dict[type[BaseException], int] = {
    InputError: 400,
    NotFoundError: 404,
    ConfigError: 503,
    BackendError: 503,
    NotIndexedError: 503,
    NotReadyError: 503,
}


def status_for(exc: BaseException) -> int:
    """HTTP status of a p4r error (500 for anything unexpected)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    """``{"error": <what the CLI prints after "Error: ">}``, plus the unknown ids if any."""
    body: dict[str, Any] = {"error": str(exc)}
    if isinstance(exc, UnknownCandidatesError):
        body["unknown"] = exc.unknown
    return body


_UNION_TAGS = {"one", "batch"}  # the rerank body's variant names, not fields


def field_path(loc: Sequence[str | int]) -> str:
    """``("body", "requests", 0, "candidates")`` → ``requests[0].candidates``."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path") else list(loc)
    if parts and parts[0] in _UNION_TAGS:
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part not in _UNION_TAGS:
            text += f".{part}" if text else str(part)
    return text


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line for a request that failed validation, in the CLI's ``field '...': ...`` form."""
    if not errors:
        return "invalid request"
    first = errors[0]
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "json_invalid":
        error = (first.get("ctx") or {}).get("error", "")
        message = f"request body is not valid JSON ({error})" if error else message
        field = None
    else:
        field = field_path(first.get("loc", ())) or None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return str(InputError(message + more, field=field))
