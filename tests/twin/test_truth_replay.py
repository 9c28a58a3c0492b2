"""The truth replayed alongside the loop (twin.truth_replay) is the truth replayed after it (replay_truth)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from twin.batch_figure import replay_truth
from twin.record import MemoryRecord, SetpointRow
from twin.scenario import CHO_SCENARIO, parse_scenario
from twin.truth_replay import ReplayError, ReplayTap, TruthReplay

STEPS = 60


def short_cho() -> str:
    """The default CHO scenario cut to 5 hours (60 periods of 5 min)."""
    text = CHO_SCENARIO.read_text()
    old = "steps = 4032             # 14 days of 5-minute periods"
    assert old in text
    return text.replace(old, f"steps = {STEPS}")


def setpoint_rows() -> list[SetpointRow]:
    """A loop's setpoint rows: intended then applied; a refused write; a step written twice; steps without."""
    rng = np.random.default_rng(7)
    rows = []
    for step in range(STEPS):
        if step % 9 == 4:  # no write this step: the plant holds the last applied input
            continue
        values = {"F": float(rng.uniform(0.0, 0.004)), "P_heater": float(rng.uniform(5.0, 15.0))}
        t_s = 300.0 * step
        rows.append(SetpointRow(step, step, t_s, "intended", values))
        if step % 11 == 5:  # refused: never applied
            rows.append(SetpointRow(step, step, t_s, "refused", values, "out of range"))
            continue
        rows.append(SetpointRow(step, step, t_s, "applied", values))
        if step % 13 == 6:  # written again within the step: the last applied row counts
            again = {"F": values["F"] / 2, "P_heater": values["P_heater"] + 1.0}
            rows.append(SetpointRow(step, step + 1000, t_s + 1.0, "applied", again))
    return rows


def test_the_replay_beside_the_loop_is_bit_for_bit_the_replay_after_it() -> None:
    scenario = parse_scenario(short_cho())
    rows = setpoint_rows()
    recorded = MemoryRecord()
    with TruthReplay(scenario) as replay:
        tap = ReplayTap(recorded, replay)
        for row in rows:
            tap.setpoint(row)
        t, x = replay.result(STEPS)
    assert recorded.setpoints == rows  # the tap records everything, unchanged
    t_after, x_after = replay_truth(scenario, recorded)
    assert t.shape == (STEPS + 1,) and x.shape == (STEPS + 1, len(scenario.spec().states))
    np.testing.assert_array_equal(t, t_after)
    np.testing.assert_array_equal(x, x_after)
    # The inputs mattered: the states moved (volume grows with the feed).
    assert x[-1, scenario.spec().states.index("V")] > x[0, scenario.spec().states.index("V")]


def test_a_replay_that_failed_does_not_stop_the_loop_and_says_why() -> None:
    scenario = replace(parse_scenario(short_cho()), source="[plant]\nseed = 'not a number'\n")
    with TruthReplay(scenario) as replay:
        tap = ReplayTap(MemoryRecord(), replay)
        for row in setpoint_rows():
            tap.setpoint(row)  # no error: the batch goes on
        with pytest.raises(ReplayError, match="ScenarioError"):
            replay.result(STEPS)
