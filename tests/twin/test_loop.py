"""The loop's data flow, observed arrow by arrow, against the real protocol handler in-process."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pytest

from controllers.config import dompc_example_config
from controllers.interfaces import ControlStep, FloatArray
from controllers.nmpc import build_mpc
from hil.handler import ProtocolHandler
from hil.inprocess import InProcessPlant
from plant_models.errors import PlantTimeout
from plant_models.fedbatch_haldane import fedbatch_haldane
from twin.clock import VirtualClock
from twin.estimation import MeasuredStateEstimator
from twin.interfaces import Estimate, Measurements, Reading
from twin.loop import run_loop
from twin.record import EventRow, MemoryRecord, SetpointRow
from twin.simulated_plant import SimulatedPlant

SPEC = fedbatch_haldane()
P = np.array(SPEC.vector("params", SPEC.nominal_params))


class OrderRecorder(MemoryRecord):
    """A MemoryRecord that also notes the order in which the loop reports each arrow."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def measurements(self, step: int, meas: Measurements) -> None:
        self.order.append("read")
        super().measurements(step, meas)

    def estimate(self, step: int, est: Estimate) -> None:
        self.order.append("estimate")
        super().estimate(step, est)

    def control(self, step: int, t_s: float, result: ControlStep) -> None:
        self.order.append("control")
        super().control(step, t_s, result)

    def setpoint(self, row: SetpointRow) -> None:
        self.order.append(row.state)
        super().setpoint(row)

    def event(self, row: EventRow) -> None:
        self.order.append(f"event:{row.kind}")
        super().event(row)


class FixedController:
    """A controller that always asks for the same input and says it took ``compute_s``."""

    name = "fixed"

    def __init__(self, u: float, compute_s: float = 1e-4) -> None:
        self.u = u
        self.compute_s = compute_s

    def step(self, t_s: float, x: FloatArray, p: FloatArray) -> ControlStep:
        return ControlStep(np.array([self.u]), "ok", self.compute_s)


class NanSensor:
    """Plant wrapper: the named sensor reads NaN at the given steps (as a faulty probe would)."""

    def __init__(self, plant: InProcessPlant, name: str, at_reads: set[int]) -> None:
        self.plant = plant
        self.name = name
        self.at_reads = at_reads
        self.reads = 0

    def read(self, names: tuple[str, ...] | None = None) -> Measurements:
        meas = self.plant.read(names)
        self.reads += 1
        if self.reads - 1 not in self.at_reads:
            return meas
        values: Mapping[str, Reading] = {
            **meas.values, self.name: replace(meas.values[self.name], value=math.nan)
        }
        return Measurements(meas.time_s, values)

    def __getattr__(self, attr: str) -> object:
        return getattr(self.plant, attr)


def _plant() -> tuple[SimulatedPlant, InProcessPlant]:
    sim = SimulatedPlant(SPEC)
    return sim, InProcessPlant(ProtocolHandler(sim))


def _run(plant: object, controller: object, recorder: MemoryRecord, steps: int = 3, **kw: object) -> object:
    return run_loop(
        spec=SPEC,
        plant=plant,  # type: ignore[arg-type]
        estimator=MeasuredStateEstimator(SPEC, P),
        controller=controller,  # type: ignore[arg-type]
        clock=VirtualClock(plant.advance, 3600.0),  # type: ignore[attr-defined]
        recorder=recorder,
        steps=steps,
        period_s=3600.0,
        **kw,  # type: ignore[arg-type]
    )


def test_each_step_follows_the_data_flow_in_order() -> None:
    sim, plant = _plant()
    rec = OrderRecorder()
    result = _run(plant, FixedController(0.05), rec, steps=3, first_seq=7)
    one_step = ["read", "estimate", "control", "intended", "applied"]
    assert rec.order == one_step * 3 + ["read"]
    assert [r.seq for r in rec.setpoints] == [7, 7, 8, 8, 9, 9]
    assert result.final.time_s == pytest.approx(3 * 3600.0)  # type: ignore[attr-defined]
    assert sim.time_s == pytest.approx(3 * 3600.0)
    # The plant really applied the setpoint: volume grew by 0.05 L/h for 3 h.
    assert sim.true_state[3] == pytest.approx(120.15, rel=1e-9)


def test_refused_setpoint_is_recorded_and_plant_keeps_its_input() -> None:
    sim, plant = _plant()
    rec = OrderRecorder()
    result = _run(plant, FixedController(0.5), rec, steps=2)  # 0.5 L/h > the pump's 0.2 max
    assert result.refused_writes == 2  # type: ignore[attr-defined]
    refused = [r for r in rec.setpoints if r.state == "refused"]
    assert [r.error for r in refused] == ["out_of_range", "out_of_range"]
    assert "event:setpoint_refused" in rec.order
    assert sim.applied() == {"inp": 0.0}  # still the safe value it started with
    assert sim.true_state[3] == pytest.approx(120.0, rel=1e-12)


def test_nan_measurement_is_rejected_not_passed_to_the_controller() -> None:
    seen: list[FloatArray] = []

    class Spy(FixedController):
        def step(self, t_s: float, x: FloatArray, p: FloatArray) -> ControlStep:
            seen.append(x.copy())
            return super().step(t_s, x, p)

    _, inner = _plant()
    rec = MemoryRecord()
    _run(NanSensor(inner, "S_s", {1}), Spy(0.01), rec, steps=3)
    assert all(np.all(np.isfinite(x)) for x in seen)
    assert seen[1][1] == seen[0][1]  # the previous estimate of S_s was kept
    assert [e.kind for e in rec.events] == ["measurement_rejected"]
    assert "S_s" in rec.events[0].message


def test_compute_over_budget_counts_as_deadline_miss() -> None:
    _, plant = _plant()
    rec = MemoryRecord()
    result = _run(plant, FixedController(0.01, compute_s=0.5), rec, steps=2, budget_s=0.1)
    assert result.deadline_misses == 2  # type: ignore[attr-defined]
    assert [e.kind for e in rec.events] == ["deadline_miss", "deadline_miss"]


def test_nmpc_closes_the_loop_through_the_protocol() -> None:
    _, plant = _plant()
    rec = MemoryRecord()
    mpc = build_mpc(SPEC, replace(dompc_example_config(), horizon=10))
    result = _run(plant, mpc, rec, steps=10)
    applied = [r for r in rec.setpoints if r.state == "applied"]
    assert len(applied) == 10 and result.fallbacks == 0  # type: ignore[attr-defined]
    assert all(0.0 <= r.values["inp"] <= 0.2 for r in applied)
    assert applied[-1].values["inp"] > 0.0  # it feeds: the product objective wants substrate


class PlanningController(FixedController):
    """Fixed input, a plan over 3 steps (the input, then 0.02, 0.03), and a compute time per call."""

    def __init__(self, u: float, compute_s: list[float]) -> None:
        super().__init__(u)
        self.times = compute_s

    def step(self, t_s: float, x: FloatArray, p: FloatArray) -> ControlStep:
        plan = np.array([[self.u], [0.02], [0.03]])
        return ControlStep(np.array([self.u]), "ok", self.times.pop(0), planned_u=plan)


def test_late_step_applies_the_previous_plans_next_move() -> None:
    _, plant = _plant()
    rec = MemoryRecord()
    result = _run(plant, PlanningController(0.05, [0.01, 0.5, 0.01]), rec, steps=3, budget_s=0.1)
    applied = [r.values["inp"] for r in rec.setpoints if r.state == "applied"]
    assert applied == [0.05, 0.02, 0.05]  # step 2 was late: the plan made at step 1 said 0.02
    assert result.deadline_misses == 1 and result.fallbacks == 1  # type: ignore[attr-defined]
    assert [e.kind for e in rec.events] == ["deadline_miss", "controller_fallback"]
    assert rec.controls[1][2].fallback == "previous_plan"


class ArmAfter:
    """A clock that puts the plant in fail-safe after period ``trip`` and arms it after period ``arm``."""

    kind = "virtual"

    def __init__(self, handler: ProtocolHandler, plant: InProcessPlant, trip: int, arm: int) -> None:
        self.handler, self.plant, self.trip, self.arm_at = handler, plant, trip, arm
        self.periods = 0

    def wait_next_period(self) -> float:
        self.plant.advance(3600.0)
        self.periods += 1
        if self.periods == self.trip:
            self.handler.enter_failsafe("test: watchdog")
        if self.periods == self.arm_at:
            self.handler.arm("test: operator")
        return 0.0


def test_failsafe_halts_control_until_the_plant_is_armed_again() -> None:
    sim = SimulatedPlant(SPEC)
    handler = ProtocolHandler(sim)
    plant = InProcessPlant(handler)
    rec = OrderRecorder()
    inputs_told: list[float | None] = []

    class Spy(MeasuredStateEstimator):
        def update(self, meas: Measurements, u_applied: FloatArray | None) -> Estimate:
            inputs_told.append(None if u_applied is None else float(u_applied[0]))
            return super().update(meas, u_applied)

    result = run_loop(
        spec=SPEC,
        plant=plant,
        estimator=Spy(SPEC, P),
        controller=FixedController(0.05),
        clock=ArmAfter(handler, plant, trip=2, arm=4),
        recorder=rec,
        steps=6,
        period_s=3600.0,
    )
    states = [(r.seq, r.state) for r in rec.setpoints]
    # seq 3 is refused (fail-safe); steps 4 and 5 send nothing; control resumes at step 6 with seq 4.
    assert states == [(1, "intended"), (1, "applied"), (2, "intended"), (2, "applied"), (3, "intended"),
                      (3, "refused"), (4, "intended"), (4, "applied"), (5, "intended"), (5, "applied")]
    kinds = [e.kind for e in rec.events]
    assert kinds == ["setpoint_refused", "plant_failsafe", "plant_armed"]
    assert result.refused_writes == 1
    assert len(rec.estimates) == 6  # estimation went on while halted
    # ... and was told the plant held its safe feed (0) while halted, not the last setpoint (0.05).
    assert inputs_told == [None, 0.05, 0.05, 0.0, 0.0, 0.05]
    assert sim.applied() == {"inp": 0.05}


class SilentHeartbeat:
    """Plant wrapper whose ``heartbeat`` times out at the given heartbeat numbers."""

    def __init__(self, plant: InProcessPlant, at_beats: set[int]) -> None:
        self.plant, self.at_beats, self.beats = plant, at_beats, 0

    def heartbeat(self) -> tuple[float, str]:
        self.beats += 1
        if self.beats - 1 in self.at_beats:
            raise PlantTimeout("no reply (test)")
        return self.plant.heartbeat()

    def __getattr__(self, attr: str) -> object:
        return getattr(self.plant, attr)


def test_a_lost_heartbeat_while_halted_keeps_the_loop_halted_not_dead() -> None:
    sim = SimulatedPlant(SPEC)
    handler = ProtocolHandler(sim)
    inner = InProcessPlant(handler)
    rec = MemoryRecord()
    run_loop(
        spec=SPEC,
        plant=SilentHeartbeat(inner, {0}),  # type: ignore[arg-type]
        estimator=MeasuredStateEstimator(SPEC, P),
        controller=FixedController(0.05),
        clock=ArmAfter(handler, inner, trip=1, arm=2),
        recorder=rec,
        steps=5,
        period_s=3600.0,
    )
    # Step 1 is refused (fail-safe); step 2's heartbeat (armed by then) is lost: still halted, nothing
    # sent; step 3's heartbeat finds the plant armed and control resumes with seq 3.
    assert [e.kind for e in rec.events] == ["setpoint_refused", "plant_failsafe", "plant_unreachable", "plant_armed"]
    assert [r.seq for r in rec.setpoints if r.state == "applied"] == [1, 3, 4]


class Unreachable:
    """Plant wrapper whose ``read`` times out at the given read numbers (a short network outage)."""

    def __init__(self, plant: InProcessPlant, at_reads: set[int]) -> None:
        self.plant, self.at_reads, self.reads = plant, at_reads, 0

    def read(self, names: tuple[str, ...] | None = None) -> Measurements:
        self.reads += 1
        if self.reads - 1 in self.at_reads:
            raise PlantTimeout("no reply (test)")
        return self.plant.read(names)

    def __getattr__(self, attr: str) -> object:
        return getattr(self.plant, attr)


def test_an_unreachable_plant_loses_the_period_not_the_batch() -> None:
    _, inner = _plant()
    rec = MemoryRecord()
    result = _run(Unreachable(inner, {1}), FixedController(0.05), rec, steps=3)
    assert [e.kind for e in rec.events] == ["plant_unreachable"]
    assert rec.events[0].t_s == 0.0  # the time of the last reading
    assert [r.seq for r in rec.setpoints if r.state == "applied"] == [1, 2]
    assert result.final.time_s == pytest.approx(3 * 3600.0)  # type: ignore[attr-defined]


def test_plant_events_are_recorded_before_each_read() -> None:
    _, plant = _plant()
    rec = OrderRecorder()
    announced = [[EventRow(0.0, "plant_event", "state=failsafe, reason=test")], [], []]
    _run(plant, FixedController(0.01), rec, steps=2, plant_events=lambda: announced.pop(0))
    assert rec.order[:2] == ["event:plant_event", "read"]
    assert rec.order.count("event:plant_event") == 1 and announced == []  # drained before each read
