"""Strict JSON-lines reading: every failure names file, line and field.

One line parser serves the canonical files, the reference layout, candidate files and the raw
dumps, so every reader refuses the same things the same way: bytes that are not UTF-8,
malformed JSON, and numbers that are not finite (``NaN``, ``Infinity``, ``1e999``), which
would otherwise pass validation and break the store later.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from p4r.errors import InputError, NotFoundError
from p4r.fsutil import atomic_write_text

# The Persona4Rec reference pipeline pads short candidate lists with this id. It is legal in
# candidate files only; as a real item it would be skipped by the reranker forever.
PAD_ITEM = "[PAD]"

# Unix seconds reach 1e11 only in the year 5138, while milliseconds passed it in 1973: a value
# at or above it is milliseconds. Above 1e14 (the year 5138 in milliseconds) it is neither.
MILLISECONDS_FROM = 1e11
TIMESTAMP_LIMIT = 1e14


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


def parse_line(raw: bytes, path: Path, number: int) -> dict[str, Any] | None:
    """Decode and parse one line; ``None`` for a blank line, InputError for anything bad."""
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
    return obj


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise NotFoundError(f"{path}: file not found") from None
    except OSError as exc:  # a folder, no permission, ...
        raise InputError(f"cannot read ({exc.strerror or exc})", file=path) from None
    with handle:
        yield from enumerate(handle, start=1)


def read_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` of a UTF-8 text file; a bad byte names its line."""
    for number, raw in _raw_lines(path):
        yield number, decode_line(raw, path, number)


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; bad lines raise InputError."""
    for number, raw in _raw_lines(path):
        obj = parse_line(raw, path, number)
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
    """Coerce an id-like value (str or int) to str; reject anything else."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(f"expected a string, got {json_type(value)}", file=path, line=line,
                         field=field)
    return str(value)


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
        raise InputError(f"{what} must be a finite number, got {value!r}", file=path,
                         line=line, field=field)
    return value


def _as_seconds(value: float, path: Path | str, line: int, field: str) -> float:
    """Finite unix time in seconds; a millisecond value (≥ 1e11) is divided by 1000."""
    _finite(value, path, line, field, "a timestamp")
    if abs(value) >= TIMESTAMP_LIMIT:
        raise InputError(f"timestamp {value!r} is out of range (expected unix seconds or "
                         f"milliseconds)", file=path, line=line, field=field)
    return value / 1000.0 if abs(value) >= MILLISECONDS_FROM else value


def parse_timestamp(value: Any, path: Path | str, line: int, field: str) -> float:
    """Unix seconds or milliseconds (number or numeric string), or an ISO-like date (UTC).

    Milliseconds are told by magnitude and turned into seconds, so one history may mix both
    and still keeps its order; NaN, infinities and out-of-range numbers are refused.
    """
    where = path  # only ever formatted into an error: no Path() per call on the hot path
    if isinstance(value, bool):
        raise InputError("expected a timestamp, got a boolean", file=where, line=line,
                         field=field)
    if isinstance(value, int | float):
        try:
            return _as_seconds(float(value), where, line, field)
        except OverflowError:
            raise InputError("timestamp is out of range", file=where, line=line,
                             field=field) from None
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return _parse_date(text, value, where, line, field)
        return _as_seconds(number, where, line, field)
    raise InputError(f"expected a timestamp, got {json_type(value)}", file=where, line=line,
                     field=field)


def _parse_date(text: str, value: str, path: Path | str, line: int, field: str) -> float:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"unreadable timestamp {value!r}", file=path, line=line,
                         field=field) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


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


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write all rows as JSON lines in one atomic replace: never a half-written file."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
