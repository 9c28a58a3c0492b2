"""The real-time loop clock on an injected clock: phase kept, overruns skipped and counted, no burst."""

from __future__ import annotations

import pytest

from twin.clock import RealtimeClock


class FakeTime:
    """monotonic() and sleep() of a clock the test controls; ``work`` simulates a step's duration."""

    def __init__(self) -> None:
        self.now = 50.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds + 0.001  # the OS wakes us 1 ms late

    def work(self, seconds: float) -> None:
        self.now += seconds


def _clock(t: FakeTime, period_s: float = 0.05) -> RealtimeClock:
    return RealtimeClock(period_s, monotonic=t.monotonic, sleep=t.sleep)


def test_on_time_steps_wait_to_the_period_start_and_record_jitter() -> None:
    t = FakeTime()
    clock = _clock(t)
    for _ in range(3):
        t.work(0.01)
        assert clock.wait_next_period() == 0.0
    assert t.now == pytest.approx(50.0 + 3 * 0.05 + 0.001, abs=1e-12)  # the phase is kept, not drifting
    assert clock.jitter_s == pytest.approx([0.001, 0.001, 0.001])
    assert clock.misses == 0


def test_overrun_skips_to_the_next_future_period_without_bursting() -> None:
    t = FakeTime()
    clock = _clock(t)
    t.work(0.12)  # the first step overruns by 0.07 s: periods 1 and 2 have begun
    assert clock.wait_next_period() == pytest.approx(0.07)
    assert t.now == pytest.approx(50.0 + 3 * 0.05 + 0.001)  # woke at the start of period 3
    assert clock.misses == 1
    t.work(0.01)
    assert clock.wait_next_period() == 0.0  # and the next period is a full one: no catch-up burst
    assert t.sleeps[-1] == pytest.approx(0.05 - 0.011)


@pytest.mark.parametrize("period_s", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_period_is_refused(period_s: float) -> None:
    with pytest.raises(ValueError, match="period_s"):
        RealtimeClock(period_s)
