"""The real-time loop: 60 periods of 50 ms against a real-time plant server in another process.

The loop runs the default scenario's NMPC, a heartbeat thread and the real-time clock, exactly as
``bioimp run`` does against a real-time plant; the figures are the clock's wake-up jitter and the
deadline misses (periods the step overran).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.budgets import check
from controllers.nmpc import build_mpc
from hil.client import ZmqPlant
from hil.heartbeat import HeartbeatSender
from hil.launch import spawn_plant_server
from twin.clock import RealtimeClock
from twin.estimation import MeasuredStateEstimator
from twin.loop import LoopResult, run_loop
from twin.record import MemoryRecord
from twin.runner import twin_params
from twin.scenario import HALDANE_SCENARIO, load_scenario

PERIOD_S = 0.05
PERIODS = 60


def test_realtime_loop_jitter_and_misses(benchmark: Any) -> None:
    scenario = load_scenario(HALDANE_SCENARIO)
    spec = scenario.spec()
    p = twin_params(spec, scenario)
    controller = build_mpc(spec, scenario.controller.mpc)
    outcome: dict[str, Any] = {}

    def run() -> LoopResult:
        with (
            spawn_plant_server(scenario.model, clock="realtime", extra_args=["--watchdog", "1"]) as server,
            ZmqPlant(server.command) as plant,
            HeartbeatSender(server.command, 0.25),
        ):
            plant.hello()
            clock = RealtimeClock(PERIOD_S)
            result = run_loop(
                spec=spec,
                plant=plant,
                estimator=MeasuredStateEstimator(spec, p),
                controller=controller,
                clock=clock,
                recorder=MemoryRecord(),
                steps=PERIODS,
                period_s=PERIOD_S,
                budget_s=0.8 * PERIOD_S,
            )
            outcome["clock"] = clock
            return result

    benchmark.group = "realtime"
    result = benchmark.pedantic(run, rounds=1, iterations=1)
    clock: RealtimeClock = outcome["clock"]
    # One wait per step the loop ran; a step whose period an overrun skipped is lost, not run late.
    assert result.steps == PERIODS and len(clock.jitter_s) + clock.skipped_total >= PERIODS >= len(clock.jitter_s)
    jitter_ms = np.asarray(clock.jitter_s) * 1e3
    figures = {
        "jitter_p50_ms": float(np.percentile(jitter_ms, 50)),
        "jitter_p99_ms": float(np.percentile(jitter_ms, 99)),
        "misses": float(clock.misses),
        "deadline_misses": float(result.deadline_misses),
    }
    benchmark.extra_info.update(figures)
    if not benchmark.disabled:
        check("realtime_jitter_p99_ms", figures["jitter_p99_ms"])
        check("realtime_missed_periods", figures["misses"])
