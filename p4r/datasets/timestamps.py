"""The one timestamp rule of p4r: files, ``history`` requests, live interactions and the CLI.

Accepted: unix **seconds** or **milliseconds** (a JSON number or a numeric string), or an
**ISO-8601** date-time (``2024-01-15T10:10:00Z``, ``2024-01-15 10:10:00``; UTC unless it carries
an offset). All three spellings of one instant give the same float of unix seconds.

* Seconds or milliseconds: a number above ``2e10`` is milliseconds, at or below it seconds.
  That is pydantic's documented rule for ``datetime`` (so the HTTP API reads numbers the way a
  FastAPI user expects), and no real value is ambiguous under it: ``2e10`` seconds is the year
  2603, ``2e10`` milliseconds August 1970.
* Range: from ``1970-01-01T00:00:00Z`` (0) to one day after the clock of the machine reading
  it. The upper bound is what matters: profiles average a user's *newest* interactions, so an
  event dated in the future (a millisecond value read as seconds, ``1e300``) would stay the
  newest forever; one day of slack absorbs clock skew and time-zone mistakes. The bound only
  grows, so a file accepted once is accepted later too. The lower bound is the epoch rather
  than a plausible first review (say 1990) because small ordinal times (``1``, ``2``, …) are
  how tests, toy files and a history without timestamps (its position) express order.

Why not pydantic's ``datetime`` itself: it accepts any date from year 1 to 9999 (negative
numbers included), so a range check is needed anyway; numbers would round-trip through a
``datetime`` (microsecond rounding, an object per value on million-line dumps); and it refuses
surrounding spaces and ISO-8601 forms that ``datetime.fromisoformat`` reads (the basic
``20160309T193544``, week dates, ``2016-03-09T19``). So ``fromisoformat`` reads the strings, and
numbers are told apart here with pydantic's boundary.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from p4r.datasets.strings import shown

# A number above this is milliseconds (pydantic's boundary for datetime fields).
MILLISECONDS_ABOVE = 2e10
EARLIEST = 0.0  # 1970-01-01T00:00:00Z
FUTURE_SLACK_SECONDS = 86_400.0

ACCEPTED = ("unix seconds or milliseconds, or an ISO-8601 date such as "
            "'2024-01-15T10:10:00Z', from 1970-01-01 to one day from now")


class TimestampError(ValueError):
    """A value that is not a timestamp under the rule; the message says what was given and
    what is accepted (callers add the file, line and field)."""


def latest_accepted(now: float | None = None) -> float:
    """The newest instant accepted, in unix seconds: one day after ``now`` (the clock)."""
    return (time.time() if now is None else now) + FUTURE_SLACK_SECONDS


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%MZ")


def _in_range(seconds: float, given: Any, now: float | None) -> float:
    if seconds < EARLIEST:
        raise TimestampError(f"timestamp {shown(given)} is before 1970-01-01 (expected "
                             f"{ACCEPTED})")
    latest = latest_accepted(now)
    if seconds > latest:
        read = _iso(seconds) if seconds < 253_402_300_800 else "after the year 9999"
        raise TimestampError(f"timestamp {shown(given)} is in the future ({read}; the latest "
                             f"accepted is {_iso(latest)}; expected {ACCEPTED})")
    return seconds


def _number(value: float, given: Any, now: float | None) -> float:
    if not math.isfinite(value):
        raise TimestampError(f"a timestamp must be a finite number, got {shown(given)}")
    seconds = value / 1000.0 if value > MILLISECONDS_ABOVE else value
    return _in_range(seconds, given, now)


def _date(text: str, given: str, now: float | None) -> float:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise TimestampError(f"unreadable timestamp {shown(given)} (expected {ACCEPTED})"
                             ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return _in_range(parsed.timestamp(), given, now)


def to_unix_seconds(value: Any, *, now: float | None = None) -> float:
    """Read a timestamp under the one rule and return unix seconds.

    Args:
        value: a number, a numeric string, an ISO-8601 string or a ``datetime`` (naive means
            UTC). Booleans, ``null`` and other JSON types are refused.
        now: the clock for the upper bound (tests); the machine's clock by default.

    Raises:
        TimestampError: not a timestamp, not finite, or out of range; the message shows what
            was given and what is accepted.
    """
    if isinstance(value, bool):
        raise TimestampError(f"expected a timestamp ({ACCEPTED}), got a boolean")
    if isinstance(value, int | float):
        try:
            return _number(float(value), value, now)
        except OverflowError:  # an int beyond float range
            raise TimestampError(f"timestamp {shown(value)} is out of range (expected "
                                 f"{ACCEPTED})") from None
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return _date(text, value, now)
        return _number(number, value, now)
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return _in_range(aware.timestamp(), value, now)
    kind = "null" if value is None else type(value).__name__
    raise TimestampError(f"expected a timestamp ({ACCEPTED}), got {kind}")


def _validate(value: Any) -> float:
    try:
        return to_unix_seconds(value)
    except TimestampError as exc:  # a custom error keeps the message free of "Value error, "
        raise PydanticCustomError("timestamp", str(exc)) from None


TIMESTAMP_DESCRIPTION = (
    "When the interaction happened: unix seconds or milliseconds (a number above 2e10 is "
    "milliseconds), as a number or a numeric string, or an ISO-8601 date-time (UTC unless it "
    "has an offset). Accepted from 1970-01-01 to one day after the server's clock. Stored and "
    "returned as unix seconds.")

# The pydantic face of the rule: requests validate with it and the OpenAPI document shows
# ``number | string`` with the description and examples (answers show a number).
Timestamp = Annotated[
    float,
    BeforeValidator(_validate, json_schema_input_type=float | str),
    Field(description=TIMESTAMP_DESCRIPTION,
          examples=[1705313400, 1705313400000, "2024-01-15T10:10:00Z"]),
]
