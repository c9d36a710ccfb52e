"""The event log on a full disk: one error naming the log, nothing half-logged, and the log
works again once there is space."""

from __future__ import annotations

import numpy as np
import pytest

from p4r.datasets.events import EventLog
from p4r.errors import StorageFullError
from tests.conftest import SmallDisk


def _row(item: str, text: str = "") -> dict[str, object]:
    return {"user_id": "u", "item_id": item, "timestamp": 1_700_000_000, "text": text}


def test_an_append_on_a_full_disk_is_one_error_naming_the_log(small_disk: SmallDisk) -> None:
    path = small_disk.root / "events" / "demo.sqlite"
    log = EventLog(path)
    try:
        log.append([_row("first")], np.zeros((1, 4)), "fp")
        small_disk.fill()
        # Before: OperationalError "cannot rollback - no transaction is active", hiding
        # "database or disk is full".
        with pytest.raises(StorageFullError) as info:
            for n in range(50):  # enough to need new pages whatever sqlite had spare
                log.append([_row(f"big-{n}", "x" * 20_000)], np.zeros((1, 384)), "fp")
        assert info.value.path == str(path)
        assert "the interactions were not logged" in str(info.value)
        assert info.value.__context__ is None or "cannot rollback" not in str(
            info.value.__context__)
        logged = [e.item_id for e in log.since(0)]
        assert logged[0] == "first" and all(i.startswith("big-") for i in logged[1:])
        small_disk.free()
        assert log.append([_row("after")], np.zeros((1, 4)), "fp") == [True]
        assert log.since(0)[-1].item_id == "after"
    finally:
        log.close()


def test_the_log_keeps_what_callers_use() -> None:
    """``max_seq`` and ``put_vectors`` had no caller and are gone; ``for_user`` stays (events
    will be loaded per user on demand)."""
    assert not hasattr(EventLog, "max_seq") and not hasattr(EventLog, "put_vectors")
    assert callable(EventLog.for_user)
