"""One timestamp rule for every path: files, ``history`` entries, live interactions and rows.

Each value is given to every path; all of them must read the same instant, or all refuse it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from p4r.datasets import load_dataset
from p4r.datasets.jsonl import parse_timestamp
from p4r.datasets.models import ReviewRow
from p4r.datasets.timestamps import (
    FUTURE_SLACK_SECONDS,
    MILLISECONDS_ABOVE,
    TimestampError,
    to_unix_seconds,
)
from p4r.errors import InputError
from p4r.query.models import HistoryEntry, LiveInteraction
from tests.conftest import write_jsonl

INSTANT = 1_705_313_400.0  # 2024-01-15T10:10:00Z


def _file(value: Any, tmp_path: Path) -> float:
    root = tmp_path / f"ds{time.monotonic_ns()}"
    write_jsonl(root / "personas.jsonl", [{"item_id": "a", "personas": [
        {"persona_id": "P1", "name": "n", "description": "d", "rationale": "r"}]}])
    write_jsonl(root / "reviews.jsonl", [{"user_id": "u", "item_id": "a", "timestamp": value}])
    return load_dataset("t", root).interactions[0].timestamp


def _live(value: Any, _: Path) -> float:
    return LiveInteraction(user_id="u", item_id="a", timestamp=value).timestamp


def _history(value: Any, _: Path) -> float:
    stamp = HistoryEntry(item_id="a", timestamp=value).timestamp
    assert stamp is not None
    return stamp


def _row(value: Any, _: Path) -> float:
    return ReviewRow(user_id="u", item_id="a", timestamp=value).time


PATHS: dict[str, Callable[[Any, Path], float]] = {
    "file": _file, "live interaction": _live, "history entry": _history, "canonical row": _row}
REFUSALS = (InputError, ValidationError)


@pytest.mark.parametrize("value", [
    1_705_313_400, 1_705_313_400.0, "1705313400", " 1705313400 ",
    1_705_313_400_000, "1705313400000", 1_705_313_400_000.0,
    "2024-01-15T10:10:00Z", "2024-01-15T10:10:00+00:00", "2024-01-15 10:10:00",
    "2024-01-15T11:10:00+01:00", "20240115T101000",
], ids=str)
def test_seconds_milliseconds_and_iso_are_the_same_instant_on_every_path(
        value: Any, tmp_path: Path) -> None:
    assert {name: read(value, tmp_path) for name, read in PATHS.items()} == {
        name: INSTANT for name in PATHS}


@pytest.mark.parametrize(("value", "says"), [
    (1e300, "in the future (after the year 9999"),
    (1e15, "in the future (after the year 9999"),   # microseconds: not a unit p4r reads
    (-1, "before 1970-01-01"),
    ("1969-12-31T23:59:59Z", "before 1970-01-01"),
    (time.time() + 2 * 86_400, "in the future"),
    ((time.time() + 2 * 86_400) * 1000, "in the future"),  # Date.now() of a wrong clock
    ("2999-01-01", "in the future (2999-01-01T00:00Z"),
    (float("nan"), "finite number"),  # a file refuses NaN as JSON already
    ("inf", "a timestamp must be a finite number, got 'inf'"),
    (10**400, "is out of range"),
    (True, "got a boolean"),
    ("yesterday", "unreadable timestamp 'yesterday'"),
    ([1], "got list"),
], ids=str)
def test_out_of_range_values_are_refused_on_every_path(value: Any, says: str,
                                                       tmp_path: Path) -> None:
    for name, read in PATHS.items():
        with pytest.raises(REFUSALS) as info:
            read(value, tmp_path)
        message = str(info.value)
        assert says in message, (name, message)
        assert "expected" in message or "finite" in message, (name, message)
        assert "timestamp" in message, f"{name}: the field is named"


def test_a_file_error_names_file_line_and_field(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        _file(1e15, tmp_path)
    err = info.value
    assert (Path(err.file or "").name, err.line, err.field) == ("reviews.jsonl", 1, "timestamp")
    assert "1000000000000000.0" in str(err) and "unix seconds or milliseconds" in str(err)


def test_a_live_millisecond_value_is_stored_as_seconds() -> None:
    now_ms = time.time() * 1000  # what a browser's Date.now() sends
    assert abs(_live(now_ms, Path()) - now_ms / 1000) < 1e-3


def test_the_boundaries_are_the_documented_ones() -> None:
    now = 1_800_000_000.0
    assert to_unix_seconds(0, now=now) == 0.0, "the epoch is accepted"
    assert to_unix_seconds(now + FUTURE_SLACK_SECONDS, now=now) == now + FUTURE_SLACK_SECONDS
    with pytest.raises(TimestampError, match="in the future"):
        to_unix_seconds(now + FUTURE_SLACK_SECONDS + 1, now=now)
    # pydantic's boundary: at 2e10 a number is seconds (the year 2603: in the future), above
    # it milliseconds (August 1970).
    with pytest.raises(TimestampError, match="in the future"):
        to_unix_seconds(MILLISECONDS_ABOVE, now=now)
    assert to_unix_seconds(MILLISECONDS_ABOVE + 1000, now=now) == MILLISECONDS_ABOVE / 1000 + 1
    assert to_unix_seconds(datetime(2024, 1, 15, 10, 10), now=now) == INSTANT


def test_parse_timestamp_is_the_rule_with_a_location() -> None:
    assert parse_timestamp("2024-01-15T10:10:00Z", "history", 3, "history[2].timestamp") == (
        INSTANT)
    with pytest.raises(InputError) as info:
        parse_timestamp(-5, "history", 3, "history[2].timestamp")
    assert str(info.value).startswith("history:3: field 'history[2].timestamp': timestamp -5 ")


def test_the_api_schema_says_what_a_timestamp_accepts() -> None:
    field = LiveInteraction.model_json_schema()["properties"]["timestamp"]
    assert field["anyOf"] == [{"type": "number"}, {"type": "string"}]
    assert "milliseconds" in field["description"] and "ISO-8601" in field["description"]
    assert field["examples"] == [1705313400, 1705313400000, "2024-01-15T10:10:00Z"]
    answer = LiveInteraction.model_json_schema(mode="serialization")["properties"]["timestamp"]
    assert answer["type"] == "number", "answers carry unix seconds"
    history = HistoryEntry.model_json_schema()["properties"]["timestamp"]
    assert {"type": "null"} in history["anyOf"]


def test_a_history_without_timestamps_keeps_its_order() -> None:
    """The position is the time when none is given: small ordinals are valid instants."""
    assert [parse_timestamp(i, "history", i + 1, "t") for i in range(3)] == [0.0, 1.0, 2.0]
    assert datetime.fromtimestamp(to_unix_seconds(1), UTC).year == 1970
