"""Loop clocks.

The virtual clock runs plant time as fast as the computer allows (CI, offline studies). The real-time
clock follows the monotonic wall clock with a fixed period, as a loop driving real equipment must.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

from twin.interfaces import Clock, PlantInfo


class VirtualClock:
    """Each period is an ``advance`` of the plant by ``period_s`` seconds; it never overruns."""

    kind: Literal["virtual", "realtime"] = "virtual"

    def __init__(self, advance: Callable[[float], float], period_s: float) -> None:
        """Args: advance: integrates the plant by a number of seconds; period_s: loop period (s)."""
        self._advance = advance
        self.period_s = period_s

    def wait_next_period(self) -> float:
        """Advance the plant by one period; a virtual clock is never late (returns 0.0)."""
        self._advance(self.period_s)
        return 0.0


class RealtimeClock:
    """Periods of ``period_s`` on the monotonic clock, from the clock's creation.

    Period k starts at ``t0 + k·period_s``. Each wake-up's lateness is kept in ``jitter_s``. When a step
    ends after the next period has already started (an overrun), the loop does not try to catch up
    with a burst of steps: it skips to the next period start still in the future and counts one miss.
    """

    kind: Literal["virtual", "realtime"] = "realtime"

    def __init__(
        self,
        period_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Args: period_s: loop period (s); monotonic, sleep: the clock (injectable for tests)."""
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"period_s must be a positive number of seconds, not {period_s}")
        self.period_s = period_s
        self.jitter_s: list[float] = []
        self.misses = 0
        self.skipped = 0  # periods the last wait skipped (0 when it was on time)
        self.skipped_total = 0  # periods skipped since the start: steps the loop lost
        self._monotonic = monotonic
        self._sleep = sleep
        self._t0 = monotonic()
        self._k = 0  # index of the current period

    def wait_next_period(self) -> float:
        """Sleep until the next period starts; return how late the step ended (0.0 if on time).

        On an overrun the periods already begun are skipped (counted in ``misses``) and the clock waits
        for the next one, so the loop keeps its phase and never bursts.
        """
        now = self._monotonic()
        self._k += 1
        start = self._t0 + self._k * self.period_s
        overrun = max(0.0, now - start)
        self.skipped = 0
        if overrun > 0:
            self.misses += 1
            self.skipped = math.floor(overrun / self.period_s) + 1
            self.skipped_total += self.skipped
            self._k += self.skipped
            start = self._t0 + self._k * self.period_s
        self._sleep(max(0.0, start - self._monotonic()))
        self.jitter_s.append(self._monotonic() - start)
        return overrun


def loop_clock(info: PlantInfo, advance: Callable[[float], float], period_s: float) -> Clock:
    """The loop clock for a plant: advance a virtual-clock plant, follow the wall clock for a real-time one.

    A real-time plant that runs ``time_scale`` plant seconds per wall second (an emulator in accelerated
    time) gets a period of ``period_s / time_scale`` wall seconds, so a period is still ``period_s`` of
    plant time.
    """
    if info.clock == "realtime":
        return RealtimeClock(period_s / info.time_scale)
    return VirtualClock(advance, period_s)
