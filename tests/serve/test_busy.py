"""Busy polling after answers (p4r.serve.busy): bounded by its window, extended by each answer,
off at 0, stopped at shutdown."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from p4r.serve.busy import BusyPoll


def test_polls_for_the_window_after_the_last_answer_then_sleeps() -> None:
    async def main() -> None:
        busy = BusyPoll(0.05)
        busy.touch()
        task = busy._task
        assert task is not None and not task.done()
        await asyncio.sleep(0.03)
        busy.touch()  # a second answer extends the same poll, no second task
        assert busy._task is task
        started = time.perf_counter()
        await task
        # The first deadline was ~0.02 s away: polling went on to the second (0.05 s).
        assert time.perf_counter() - started >= 0.04
        # Polling leaves the loop free: a timer set meanwhile fires on time, not after the
        # window (0.5 s here), as it would if the poll held the loop.
        long = BusyPoll(0.5)
        long.touch()
        loop = asyncio.get_running_loop()
        fired = loop.create_future()
        due = time.perf_counter() + 0.01
        loop.call_later(0.01, lambda: fired.set_result(time.perf_counter()))
        late = await asyncio.wait_for(fired, 2.0) - due
        assert -0.002 < late < 0.2
        long.stop()
        await asyncio.sleep(0)
        assert long._task is not None and long._task.done()

    asyncio.run(main())


def test_zero_never_polls() -> None:
    async def main() -> None:
        busy = BusyPoll(0.0)
        busy.touch()
        assert busy._task is None

    asyncio.run(main())


def test_more_workers_than_cpus_turn_polling_off_unless_set(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from p4r.serve.runner import fit_busy_poll

    monkeypatch.delenv("P4R_SERVE__BUSY_POLL_US", raising=False)
    assert not fit_busy_poll(2, cpus=2)
    assert "P4R_SERVE__BUSY_POLL_US" not in os.environ
    assert fit_busy_poll(3, cpus=2)
    assert os.environ["P4R_SERVE__BUSY_POLL_US"] == "0"
    monkeypatch.setenv("P4R_SERVE__BUSY_POLL_US", "500")  # the operator's choice stands
    assert not fit_busy_poll(8, cpus=2)
    assert os.environ["P4R_SERVE__BUSY_POLL_US"] == "500"
