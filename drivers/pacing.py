"""Real-time pacing of 20 ms audio frames on the event loop, with honest statistics.

Modems have small audio buffers and no flow control worth the name: frames must go out one
every 20 ms, not in bursts (reference 1.1: "writes must be paced at real time ... using
silence frames to fill gaps"). :class:`FramePacer` calls ``tick()`` on an absolute schedule
(start + n x period), so lateness never accumulates. If the loop was held up, the missed
ticks are caught up at once (up to ``max_catch_up``); beyond that the schedule slips forward
and the slip is counted, because a burst of stale audio is worse than a short gap.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable


class LatenessStats:
    """Tick lateness in milliseconds, kept sorted in bounded memory (a rolling window)."""

    def __init__(self, window: int = 6000) -> None:
        self._window = window
        self._ring: list[float] = []
        self._sorted: list[float] = []
        self._next = 0

    def add(self, value_ms: float) -> None:
        if len(self._ring) < self._window:
            self._ring.append(value_ms)
        else:
            old = self._ring[self._next]
            del self._sorted[bisect.bisect_left(self._sorted, old)]
            self._ring[self._next] = value_ms
            self._next = (self._next + 1) % self._window
        bisect.insort(self._sorted, value_ms)

    def percentile(self, p: float) -> float | None:
        if not self._sorted:
            return None
        index = min(len(self._sorted) - 1, max(0, round(p / 100 * (len(self._sorted) - 1))))
        return self._sorted[index]

    def __len__(self) -> int:
        return len(self._sorted)


class FramePacer:
    def __init__(self, tick: Callable[[], None], *, period: float = 0.02,
                 max_catch_up: int = 3) -> None:
        self._tick = tick
        self.period = period
        self.max_catch_up = max_catch_up
        self._loop = asyncio.get_running_loop()
        self._start = 0.0
        self._n = 0
        self._handle: asyncio.TimerHandle | None = None
        self.ticks = 0
        self.slips = 0
        self.lateness = LatenessStats()

    def start(self) -> None:
        if self._handle is not None:
            return
        self._start = self._loop.time()
        self._n = 0
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        self._n += 1
        self._handle = self._loop.call_at(self._start + self._n * self.period, self._fire)

    def _fire(self) -> None:
        now = self._loop.time()
        due = self._start + self._n * self.period
        self.lateness.add((now - due) * 1000.0)
        behind = int((now - due) / self.period)
        if behind > self.max_catch_up:
            # The loop was stalled for a long while: do not burst; move the schedule on.
            self.slips += 1
            self._start = now - self._n * self.period
            behind = 0
        for _ in range(1 + behind):
            self.ticks += 1
            self._tick()
            if behind:
                self._n += 1
        if self._handle is None:  # stopped from inside tick()
            return
        self._schedule()
