"""Drive the CHO estimation scenario (tests/twin/data/cho_estimation.toml) in-process and keep the truth.

The loop runs as ``bioimp run`` runs it (``run_loop`` through the protocol handler), with a fixed feed
and a heater law on the estimated temperature in place of a controller (control is another issue's);
``Drive`` also notes the plant's true state at each step, which only a test may look at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controllers.interfaces import ControlStep, FloatArray
from hil.handler import ProtocolHandler
from hil.inprocess import InProcessPlant
from plant_models.spec import ModelSpec
from twin.clock import VirtualClock
from twin.estimator_config import build_estimator
from twin.interfaces import Estimate, Estimator, Measurements, Plant
from twin.loop import run_loop
from twin.record import MemoryRecord
from twin.runner import twin_params
from twin.scenario import Scenario, parse_scenario
from twin.simulated_plant import SimulatedPlant

SCENARIO_PATH = Path(__file__).parent / "data" / "cho_estimation.toml"
FEED_L_PER_H = 0.5 / 336  # 0.5 L over 14 days: glucose never runs out, so no starvation stiffness
T_SET = 36.5
GAIN_W_PER_K = 0.7  # heater law: per-hour loop gain ~0.5 with the 2 L vessel's 0.66 K/(W h)


def scenario(extra: str = "") -> Scenario:
    """The CHO estimation scenario, with ``extra`` TOML appended (e.g. ``[[plant.sensors.faults]]``)."""
    return parse_scenario(SCENARIO_PATH.read_text() + extra, str(SCENARIO_PATH))


class Drive:
    """Fixed feed, heater = estimated holding power + proportional term; notes the truth each step."""

    name = "drive"

    def __init__(self, spec: ModelSpec, plant: SimulatedPlant | None) -> None:
        self.spec = spec
        self.plant = plant
        self.truth: list[tuple[float, FloatArray]] = []

    def step(self, t_s: float, x: FloatArray, p: FloatArray) -> ControlStep:
        if self.plant is not None:
            self.truth.append((t_s, self.plant.true_state.copy()))
        T = x[self.spec.states.index("T")]
        ua = p[self.spec.params.index("UA")]
        heater = float(np.clip(ua * (T_SET - p[self.spec.params.index("T_amb")]) + GAIN_W_PER_K * (T_SET - T), 0, 200))
        return ControlStep(np.array([FEED_L_PER_H, heater]), "ok", 0.0)


@dataclass
class Tap:
    """An Estimator wrapper that keeps every (measurements, applied input, estimate)."""

    inner: Estimator
    log: list[tuple[Measurements, FloatArray | None, Estimate]] = field(default_factory=list)

    def update(self, meas: Measurements, u_applied: FloatArray | None) -> Estimate:
        est = self.inner.update(meas, u_applied)
        self.log.append((meas, u_applied, est))
        return est


@dataclass
class Run:
    """A finished in-process run."""

    scenario: Scenario
    spec: ModelSpec
    plant: SimulatedPlant
    drive: Drive
    tap: Tap
    record: MemoryRecord


def new_plant(sc: Scenario) -> SimulatedPlant:
    """The scenario's simulated plant, as ``bioimp plant serve --scenario`` builds it."""
    return sc.new_plant()


def run(sc: Scenario, steps: int, estimator: Estimator | None = None, plant: Plant | None = None) -> Run:
    """Run ``steps`` hours of the scenario in-process (or against ``plant``, truth then not kept)."""
    spec = sc.spec()
    sim = new_plant(sc)
    est = estimator or build_estimator(spec, twin_params(spec, sc), sc.estimator, sc.plant.sensors)
    drive = Drive(spec, sim if plant is None else None)
    target = plant if plant is not None else InProcessPlant(ProtocolHandler(sim))
    tap = Tap(est)
    record = MemoryRecord()
    run_loop(
        spec=spec,
        plant=target,
        estimator=tap,
        controller=drive,
        clock=VirtualClock(target.advance, sc.loop.period_s),
        recorder=record,
        steps=steps,
        period_s=sc.loop.period_s,
    )
    return Run(sc, spec, sim, drive, tap, record)


def relative_errors(r: Run, state: str, after_s: float) -> list[float]:
    """|estimate / truth − 1| of ``state`` at every step from ``after_s`` on."""
    i = r.spec.states.index(state)
    out = []
    for (t, x_true), (_, _, est) in zip(r.drive.truth, r.tap.log, strict=True):
        if t >= after_s:
            out.append(abs(est.x[i] / x_true[i] - 1.0))
    return out
