"""The two clocks the runtime runs on. A cycle asks to run again at a time; the wall clock
sleeps until then, the simulated clock jumps there (rounded up to its step, as the
operator's polls and resyncs would see a change)."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from typing import Protocol


class Clock(Protocol):
    #: The smallest time between two cycles this clock tells apart (0: continuous).
    resolution: float

    def now(self) -> float:
        """Seconds since the run started."""
        ...

    def wall(self, t: float) -> dt.datetime:
        """The date and time of ``t`` (what the snapshots' ``now`` is)."""
        ...

    async def wait_until(self, t: float) -> None:
        """Return at (or just after) ``t``."""
        ...


class WallClock:
    """Real time. Waits at least ``min_wait_seconds``, so that a cycle that asks to run
    again at once still leaves the processes it drives some time."""

    resolution = 0.0

    def __init__(self, *, min_wait_seconds: float = 0.05) -> None:
        self.min_wait = min_wait_seconds
        self.restart()

    def restart(self) -> None:
        """Time 0 is now."""
        self.started: float = time.monotonic()
        self.start = dt.datetime.now(dt.UTC)

    def now(self) -> float:
        return time.monotonic() - self.started

    def wall(self, t: float) -> dt.datetime:
        return self.start + dt.timedelta(seconds=t)

    async def wait_until(self, t: float) -> None:
        await asyncio.sleep(max(t - self.now(), self.min_wait))


class SimulatedClock:
    """Simulated time from ``start``: moves only when the runtime waits, in steps of
    ``step_seconds`` (never back, always at least one step)."""

    def __init__(self, start: dt.datetime, step_seconds: float) -> None:
        self.start = start
        self.resolution = step_seconds
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wall(self, t: float) -> dt.datetime:
        return self.start + dt.timedelta(seconds=t)

    async def wait_until(self, t: float) -> None:
        step = self.resolution
        self.t = max(math.ceil(t / step - 1e-9) * step, self.t + step)
