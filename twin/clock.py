"""Loop clocks. The virtual clock runs plant time as fast as the computer allows (CI, offline studies)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal


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
