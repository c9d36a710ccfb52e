"""Strict JSON-lines reading: every failure names file, line and field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from p4r.errors import InputError
from p4r.fsutil import atomic_write_text


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; malformed lines raise."""
    with path.open("r", encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InputError(f"malformed JSON ({exc.msg})", file=path, line=number) from None
            if not isinstance(obj, dict):
                raise InputError("expected a JSON object", file=path, line=number)
            yield number, obj


def require(obj: dict[str, Any], key: str, path: Path, line: int, *, prefix: str = "") -> Any:
    """Return ``obj[key]``, or raise naming the missing or empty field."""
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError("missing required field", file=path, line=line, field=prefix + key)
    return value


def as_str(value: Any, path: Path, line: int, field: str) -> str:
    """Coerce an id-like value (str or int) to str; reject anything else."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(f"expected a string, got {type(value).__name__}", file=path, line=line,
                         field=field)
    return str(value)


def parse_timestamp(value: Any, path: Path, line: int, field: str) -> float:
    """Accept unix seconds (number or numeric string) or an ISO-like date string (UTC)."""
    if isinstance(value, bool):
        raise InputError("expected a timestamp", file=path, line=line, field=field)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise InputError(f"unreadable timestamp {value!r}", file=path, line=line,
                             field=field) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    raise InputError("expected a timestamp", file=path, line=line, field=field)


def parse_rating(value: Any, path: Path, line: int, field: str) -> float | None:
    """Ratings are optional numbers; numeric strings such as ``"5.0"`` are accepted."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"expected a number, got {value!r}", file=path, line=line,
                         field=field) from None


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write all rows as JSON lines in one atomic replace: never a half-written file."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
