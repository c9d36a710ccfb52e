"""Busy polling: the event loop keeps polling for a short window after each answer instead of
sleeping in ``epoll_wait``.

On the virtual machines this was measured on, a core that halts for as little as 0.3 ms comes
back with its L1/L2 caches emptied (the host runs other work on it): a rerank that costs
0.34 ms of CPU back to back cost 0.64-0.68 ms after a 0.3 ms sleep, and 0.34 ms again after a
0.3 ms spin (``p4r bench serve`` at one client shows it as HTTP CPU far above in-process). So
when requests come close together (one client waiting for each answer before sending the next,
or a trickle of clients), polling through the gap costs less CPU than the cold caches it
avoids, and answers sooner. The window bounds the cost: an idle worker stops polling after
``window`` seconds, and under load there is no gap to poll through. ``window`` 0 turns it off.
"""

from __future__ import annotations

import asyncio
import time


class BusyPoll:
    """One polling task per event loop, kept alive until ``window`` seconds after the last
    answer (:meth:`touch`)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.deadline = 0.0
        self._task: asyncio.Task[None] | None = None

    def touch(self) -> None:
        """An answer was sent: poll until ``window`` seconds from now."""
        if self.window <= 0:
            return
        self.deadline = time.perf_counter() + self.window
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="p4r-poll")

    async def _poll(self) -> None:
        # Each sleep(0) lets the loop run: it polls its sockets without blocking (a ready
        # callback is pending), runs what arrived, and comes back here.
        while time.perf_counter() < self.deadline:
            await asyncio.sleep(0)

    def stop(self) -> None:
        """Stop polling now (shutdown)."""
        self.deadline = 0.0
        if self._task is not None:
            self._task.cancel()
