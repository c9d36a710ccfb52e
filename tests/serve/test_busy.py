"""Busy polling after answers (p4r.serve.busy): bounded by its window, extended by each answer,
off at 0, stopped at shutdown."""

from __future__ import annotations

import asyncio
import time

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
        assert time.perf_counter() - started >= 0.015  # polled past the first deadline
        # Polling leaves the loop free: a timer set meanwhile fires on time.
        busy.touch()
        fired = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, fired.set_result, time.perf_counter())
        assert await asyncio.wait_for(fired, 1.0) > 0
        busy.stop()
        await asyncio.sleep(0)
        assert busy._task is not None and busy._task.done()

    asyncio.run(main())


def test_zero_never_polls() -> None:
    async def main() -> None:
        busy = BusyPoll(0.0)
        busy.touch()
        assert busy._task is None

    asyncio.run(main())
