"""Strict JSON-lines reading: every failure names file, line and field.

One line reader and one line parser serve the canonical files, the reference layout, candidate
files and the raw dumps, so every reader refuses the same things the same way:

* anything but a regular file (a FIFO would hang, a device is never read), symlink loops;
* a line longer than ``P4R_FILES__MAX_LINE_BYTES`` (refused before it is read whole);
* bytes that are not UTF-8, malformed JSON, and numbers that are not finite (``NaN``,
  ``Infinity``, ``1e999``), which would otherwise pass validation and break the store later;
* a string longer than ``P4R_FILES__MAX_TEXT_CHARS``, or one that is not valid Unicode (a
  lone surrogate spelled ``"\\ud800"``), naming its field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from p4r.datasets.strings import (
    MAX_ID_CHARS,
    invalid_unicode_field,
    may_hold_surrogates,
    overlong_field,
    shown,
    unicode_problem,
)
from p4r.datasets.timestamps import TimestampError, to_unix_seconds
from p4r.errors import InputError
from p4r.fsutil import open_regular, write_output
from p4r.settings import FileLimits, load_settings

# The Persona4Rec reference pipeline pads short candidate lists with this id. It is legal in
# candidate files only; as a real item it would be skipped by the reranker forever.
PAD_ITEM = "[PAD]"


class _NonFiniteNumber(ValueError):
    """Raised from inside the JSON parser on ``NaN``, ``Infinity`` or an overflowing float."""


def _strict_constant(name: str) -> float:
    raise _NonFiniteNumber(name)


def _strict_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NonFiniteNumber(text)
    return value


# One decoder for every line: json.loads with hooks would build a new decoder per call.
_STRICT = json.JSONDecoder(parse_constant=_strict_constant, parse_float=_strict_float)


def json_type(value: Any) -> str:
    """A value's type in JSON words (users write JSON, not Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def non_finite_field(value: Any, prefix: str = "") -> str | None:
    """Path (``a.b[2]``) of the first NaN or infinite float inside ``value``, if any."""
    if isinstance(value, float):
        return None if math.isfinite(value) else prefix
    children: Iterator[tuple[str, Any]]
    if isinstance(value, dict):
        children = ((f"{prefix}.{k}" if prefix else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        children = ((f"{prefix}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for path, child in children:
        found = non_finite_field(child, path)
        if found is not None:
            return found
    return None


def decode_line(raw: bytes, path: Path, number: int) -> str:
    """One line of bytes as text: UTF-8 (a byte-order mark on line 1 is dropped), or an
    InputError naming the line and column, not a traceback from the middle of a chunk."""
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                         f"{exc.start + 1})", file=path, line=number) from None


def current_limits(limits: FileLimits | None = None) -> FileLimits:
    """``limits``, or the ones in effect (``P4R_FILES__*``, defaults otherwise).

    Readers take explicit limits from callers that hold a :class:`~p4r.settings.Settings`
    (``settings.files``); everyone else gets the configured ones without passing them along.
    """
    return limits if limits is not None else load_settings().files


def parse_line(raw: bytes, path: Path, number: int, *,
               max_text_chars: int | None = None) -> dict[str, Any] | None:
    """Decode and parse one line; ``None`` for a blank line, InputError for anything bad.

    ``max_text_chars`` bounds every string (value or key) of the line; strings are only
    walked when the line is longer than the limit or spells a surrogate escape, so ordinary
    lines cost nothing extra.
    """
    text = decode_line(raw, path, number)
    if not text.strip():
        return None
    try:
        obj = _STRICT.decode(text)
    except _NonFiniteNumber:
        try:
            field = non_finite_field(json.loads(text))
        except (ValueError, RecursionError):  # the line is malformed further on as well
            field = None
        raise InputError("not a finite number (NaN and Infinity are not valid JSON)",
                         file=path, line=number, field=field) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON ({exc.msg})", file=path, line=number) from None
    except (ValueError, RecursionError) as exc:  # e.g. a 5,000-digit integer, [[[[… nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InputError(f"malformed JSON ({reason})", file=path, line=number) from None
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {json_type(obj)}", file=path,
                         line=number)
    _check_strings(obj, raw, path, number, max_text_chars)
    return obj


def _check_strings(obj: dict[str, Any], raw: bytes, path: Path, number: int,
                   max_text_chars: int | None) -> None:
    """Refuse a string that is too long (a character takes at least one byte, so only a line
    longer than the limit can hold one) or not valid Unicode."""
    if max_text_chars is not None and len(raw) > max_text_chars:
        long = overlong_field(obj, max_text_chars)
        if long is not None:
            field, length = long
            raise InputError(f"text of {length:,} characters is longer than the limit of "
                             f"{max_text_chars:,} (P4R_FILES__MAX_TEXT_CHARS)", file=path,
                             line=number, field=field or None)
    if may_hold_surrogates(raw):
        bad = invalid_unicode_field(obj)
        if bad is not None:
            raise InputError(bad[1], file=path, line=number, field=bad[0] or None)


def bounded_lines(handle: IO[bytes], path: Path, max_line_bytes: int,
                  ) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, bytes)``; a line longer than ``max_line_bytes`` (its newline not
    counted) raises InputError naming it before more than that is held in memory."""
    readline = handle.readline
    number = 0
    while True:
        raw = readline(max_line_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            raise InputError(f"line is longer than {max_line_bytes:,} bytes "
                             "(P4R_FILES__MAX_LINE_BYTES); nothing after it was read",
                             file=path, line=number)
        yield number, raw


def _raw_lines(path: Path, limits: FileLimits) -> Iterator[tuple[int, bytes]]:
    with open_regular(path) as handle:
        yield from bounded_lines(handle, path, limits.max_line_bytes)


def read_text_lines(path: Path, limits: FileLimits | None = None,
                    ) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` of a UTF-8 text file; a bad byte names its line."""
    for number, raw in _raw_lines(path, current_limits(limits)):
        yield number, decode_line(raw, path, number)


def read_jsonl(path: Path, limits: FileLimits | None = None,
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; bad lines raise InputError.

    Args:
        path: a regular file (a FIFO, device, folder or symlink loop is refused at once).
        limits: line and text bounds; ``None`` reads ``P4R_FILES__*``.
    """
    limits = current_limits(limits)
    for number, raw in _raw_lines(path, limits):
        obj = parse_line(raw, path, number, max_text_chars=limits.max_text_chars)
        if obj is not None:
            yield number, obj


def require(obj: dict[str, Any], key: str, path: Path, line: int, *, prefix: str = "") -> Any:
    """Return ``obj[key]``, or raise naming the missing or empty field."""
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError("missing required field", file=path, line=line, field=prefix + key)
    return value


def objects_in(value: Any, key: str, path: Path, line: int,
               ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("key[i].", entry)`` for a list of objects at field ``key``; anything else in
    its place (a missing list, an entry that is not an object) raises naming the field."""
    if not isinstance(value, list):
        message = ("missing required field (a list of objects)" if value is None
                   else f"expected a list of objects, got {json_type(value)}")
        raise InputError(message, file=path, line=line, field=key)
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise InputError(f"expected an object, got {json_type(entry)}", file=path,
                             line=line, field=f"{key}[{index}]")
        yield f"{key}[{index}].", entry


def as_str(value: Any, path: Path, line: int, field: str) -> str:
    """Coerce an id-like value (str or int) to str; reject anything else, an id longer than
    ``MAX_ID_CHARS`` and text that is not valid Unicode (the same rule as requests)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(f"expected a string, got {json_type(value)}", file=path, line=line,
                         field=field)
    text = str(value)
    if len(text) > MAX_ID_CHARS:
        raise InputError(f"an id of {len(text):,} characters is longer than the limit of "
                         f"{MAX_ID_CHARS}", file=path, line=line, field=field)
    problem = unicode_problem(text)
    if problem is not None:
        raise InputError(problem, file=path, line=line, field=field)
    return text


def as_item_id(value: Any, path: Path, line: int, field: str) -> str:
    """An item id of a data file: id-like, and never the padding marker ``[PAD]``."""
    item_id = as_str(value, path, line, field)
    if item_id == PAD_ITEM:
        raise InputError(f"{PAD_ITEM!r} is not an item id (it pads candidate files only)",
                         file=path, line=line, field=field)
    return item_id


def as_text(value: Any, path: Path, line: int, field: str) -> str:
    """Free text (names, descriptions, summaries, reviews) must be a JSON string; null is "".

    A number, object, list or boolean is refused rather than turned into ``"{'oops': 1}"``
    and shown to users.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"expected text (a string), got {json_type(value)}", file=path,
                         line=line, field=field)
    return value


def text_field(obj: dict[str, Any], key: str, path: Path, line: int, *, prefix: str = "",
               required: bool = False) -> str:
    """``obj[key]`` as text: :func:`as_text`, and with ``required`` never missing or blank."""
    value = require(obj, key, path, line, prefix=prefix) if required else obj.get(key)
    return as_text(value, path, line, prefix + key)


def _finite(value: float, path: Path | str, line: int, field: str, what: str) -> float:
    if not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {shown(value)}", file=path,
                         line=line, field=field)
    return value


def parse_timestamp(value: Any, path: Path | str, line: int, field: str) -> float:
    """A timestamp of a file or request in unix seconds, under the one rule of
    :mod:`p4r.datasets.timestamps` (seconds, milliseconds or ISO-8601; 1970 to now + 1 day).

    Raises:
        InputError: naming ``path``, ``line`` and ``field``, what was given and what is
            accepted.
    """
    try:
        return to_unix_seconds(value)
    except TimestampError as exc:
        raise InputError(str(exc), file=path, line=line, field=field) from None


def parse_rating(value: Any, path: Path, line: int, field: str) -> float | None:
    """Ratings are optional finite numbers; numeric strings such as ``"5.0"`` are accepted."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputError(f"expected a number, got {json_type(value)}", file=path, line=line,
                         field=field)
    try:
        rating = float(value)
    except (ValueError, OverflowError):
        raise InputError(f"expected a number, got {value!r}", file=path, line=line,
                         field=field) from None
    return _finite(rating, path, line, field, "a rating")


def jsonl_text(rows: list[dict[str, Any]]) -> str:
    """Rows as JSON lines (UTF-8 text, one object per line)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_jsonl_atomic(path: Path | str, rows: list[dict[str, Any]]) -> None:
    """Write all rows as JSON lines through :func:`p4r.fsutil.write_output`: ``-`` is stdout,
    a regular file is replaced atomically (never half-written), and a symlink, device, FIFO
    or folder at ``path`` is refused."""
    write_output(path, jsonl_text(rows))
