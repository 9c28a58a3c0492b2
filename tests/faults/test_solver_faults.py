"""Solver faults in the closed loop: an infeasible problem, a NaN in the model at an odd state, a solve past
its time budget. The controller falls back (the previous plan shifted, or the safe inputs when it has no
plan), the loop applies a valid setpoint in every period, and the record says what happened.

The plant is its own ``bioimp plant serve --log`` process (virtual clock); the loop, the SQLite record,
the EKF-less Haldane twin and the real SQP/HPIPM NMPC run in this process. The faults are injected at
the controller's inputs — the twin's state handed to it — and, for the budget, by a solve that is made
slow: the fault injectors below wrap the real parts, they do not replace them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hil.client import ZmqPlant
from hil.launch import spawn_plant_server
from plant_models.spec import ModelSpec
from tests.faults.harness import INP_LIMITS, check_plant_log_against_record, event_kinds, haldane_scenario, query
from twin.batch import new_parts
from twin.batch_record import BatchRecord, RecordConfig, RunMeta
from twin.clock import VirtualClock
from twin.interfaces import Controller, ControlStep, Estimate, Estimator, FloatArray, Measurements
from twin.loop import run_loop
from twin.record_verify import verify_record
from twin.scenario import load_scenario

STEPS = 30
INFEASIBLE = {0, 6, 7}  # X_s = 10 g/L: cannot be diluted under its 3.7 g/L cap within an hour
NAN_MODEL = {12, 13}  # V_s = 0: the dilution term F/V is infinite, the model NaN
NAN_STATE = {18}  # an estimate with a NaN in it
SLOW = {23, 24}  # the solve takes three budgets


class OddStates:
    """An :class:`Estimator` that hands the controller an odd state at scheduled steps (fault injector)."""

    def __init__(self, inner: Estimator, spec: ModelSpec) -> None:
        self.inner, self.spec, self.step = inner, spec, -1

    def update(self, meas: Measurements, u_applied: FloatArray | None) -> Estimate:
        self.step += 1
        est = self.inner.update(meas, u_applied)
        x = est.x.copy()
        if self.step in INFEASIBLE:
            x[self.spec.states.index("X_s")] = 10.0
        elif self.step in NAN_MODEL:
            x[self.spec.states.index("V_s")] = 0.0
        elif self.step in NAN_STATE:
            x[self.spec.states.index("S_s")] = np.nan
        return replace(est, x=x)


class SlowSolves:
    """A :class:`Controller` whose solve at scheduled steps takes ``delay_s`` longer (fault injector)."""

    def __init__(self, inner: Controller, delay_s: float) -> None:
        self.inner, self.delay_s, self.calls = inner, delay_s, 0
        self.name = inner.name

    def step(self, t_s: float, x: FloatArray, p: FloatArray) -> ControlStep:
        result = self.inner.step(t_s, x, p)
        if self.calls in SLOW:
            time.sleep(self.delay_s)
            result = replace(result, compute_s=result.compute_s + self.delay_s)
        self.calls += 1
        return result


@pytest.mark.timeout(120)
def test_infeasible_nan_and_late_solves_fall_back_and_every_period_gets_a_valid_setpoint(tmp_path: Path) -> None:
    scenario = load_scenario(haldane_scenario(tmp_path, STEPS))
    budget_s = scenario.controller.budget_s
    assert budget_s is not None
    spec, _, estimator, controller = new_parts(scenario)
    log, db = tmp_path / "plant.jsonl", tmp_path / "record.sqlite"
    serve = ["--scenario", str(tmp_path / "faults_haldane.toml"), "--log", str(log), "--watchdog", "0"]
    with spawn_plant_server("fedbatch_haldane", extra_args=serve) as server, ZmqPlant(server.command) as plant:
        meta = RunMeta(
            operator="test",
            scenario_name=scenario.name,
            scenario_sha256=scenario.sha256,
            scenario_source=scenario.source,
            software={},
            model=spec.name,
            controller=controller.name,
            plant_endpoint=server.command,
            plant_client_id=plant.identity.hex(),
            plant_hello={},
            states=spec.states,
            inputs=spec.inputs,
            params=spec.params,
            period_s=scenario.loop.period_s,
            steps=STEPS,
        )
        record = BatchRecord.create(db, meta, RecordConfig(durability="normal", period_s=scenario.loop.period_s))
        try:
            result = run_loop(
                spec=spec,
                plant=plant,
                estimator=OddStates(estimator, spec),
                controller=SlowSolves(controller, 3 * budget_s),
                clock=VirtualClock(plant.advance, scenario.loop.period_s),
                recorder=record,
                steps=STEPS,
                period_s=scenario.loop.period_s,
                budget_s=budget_s,
            )
        finally:
            record.close()
    assert verify_record(db).ok

    # Every period got a setpoint, applied, finite and within the pump's limits (the plant's own log).
    applied = query(db, "SELECT step FROM setpoints WHERE state = 'applied' ORDER BY rec")
    assert [s for (s,) in applied] == list(range(STEPS))
    assert result.refused_writes == 0
    assert check_plant_log_against_record(log, db) == STEPS

    controls = {
        step: (status, fallback) for step, status, fallback in query(db, "SELECT step, status, fallback FROM controls")
    }
    print({k: v for k, v in controls.items() if v[1] is not None})
    assert controls[0][1] == "safe_hold"  # no plan yet: the safe inputs
    # Infeasible twice in a row: the previous plan shifted, then (no plan left) the safe inputs.
    assert [controls[s][1] for s in (6, 7)] == ["shifted_plan", "safe_hold"]
    assert all(controls[s][0] != "ok" for s in INFEASIBLE)
    # V = 0: RTI's step at the old linearisation still solves; the NaN appears at the next linearisation
    # along the plan through V = 0, which fails, falls back, and the controller starts again cold.
    assert any(controls[s][1] is not None for s in (12, 13, 14)), [controls[s] for s in (12, 13, 14)]
    assert controls[18] == ("not_finite", "shifted_plan")
    for step in SLOW:
        assert controls[step][1] is not None, (step, controls[step])
    # After each fault the controller recovers: the last steps are normal solves.
    for first_good in (10, 17, 21, 27):
        assert controls[first_good] == ("ok", None), (first_good, controls[first_good])
    events = event_kinds(db)
    print(events)
    assert events["controller_fallback"] >= len(INFEASIBLE | NAN_STATE | SLOW) + 1
    assert events["deadline_miss"] == len(SLOW)
    misses = [m for (m,) in query(db, "SELECT message FROM events WHERE kind = 'deadline_miss'")]
    assert all("applied the previous plan's next move" in m for m in misses), misses
    lo, hi = INP_LIMITS
    for (u,) in query(db, "SELECT u FROM controls"):
        value = np.frombuffer(u, dtype="<f8")
        assert np.all(np.isfinite(value)) and np.all((lo <= value) & (value <= hi))
