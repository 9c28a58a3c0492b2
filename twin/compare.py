"""``bioimp compare``: the same simulated plant (same seed) under each controller, side by side.

Each controller is the scenario's two-level cascade with a different planner (``nmpc``, ``bolus``,
``openloop``, ``oracle``: :mod:`twin.cascade_setup`), the same PID, the same estimator, and a fresh plant
built from the same ``[plant]`` table, so the true parameters, process noise and sensor noise draws are
the same. The plant runs in-process (the protocol handler, as over ZeroMQ) because the comparison is
scored on the plant's **true** state, which only an offline study may look at: harvested antibody
(true titer x true volume at the end), peaks of lactate and ammonia, and constraint violations.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from controllers.interfaces import Controller, ControlStep, FloatArray
from hil.handler import ProtocolHandler
from hil.inprocess import InProcessPlant
from plant_models.errors import ScenarioError
from twin.cascade_setup import PLANNERS, build_cascade
from twin.clock import VirtualClock
from twin.estimator_config import build_estimator
from twin.loop import run_loop
from twin.record import MemoryRecord
from twin.runner import twin_params
from twin.scenario import Scenario
from twin.simulated_plant import SimulatedPlant

__all__ = ["ControllerScore", "compare", "format_table", "parse_controllers", "run_one", "write_compare"]

#: Relative tolerance before a bound counts as violated (integration and rounding noise).
VIOLATION_RTOL = 1e-6


@dataclass(frozen=True)
class ControllerScore:
    """One controller's batch, scored on the plant's true state.

    Attributes:
        controller: planner name.
        final_titer_mg_per_l: true antibody titer at harvest.
        harvested_mg: true titer times true volume at harvest.
        max_lactate_mM, max_ammonia_mM: peaks of the true concentrations.
        violations: constraint -> number of loop periods the true state was outside it.
        hard_violations: the sum over the hard constraints (every one except the glucose band).
        feed_l: feed pumped (L).
        energy_wh: heater energy (Wh).
        refused_writes: setpoints the plant refused (out of an actuator's range).
        wall_s: wall time of the batch.
    """

    controller: str
    final_titer_mg_per_l: float
    harvested_mg: float
    max_lactate_mM: float
    max_ammonia_mM: float
    violations: dict[str, int]
    hard_violations: int
    feed_l: float
    energy_wh: float
    refused_writes: int
    wall_s: float


class _Truth:
    """A Controller wrapper that notes the plant's true state before each decision (offline study)."""

    def __init__(self, inner: Controller, plant: SimulatedPlant) -> None:
        self.inner = inner
        self.plant = plant
        self.name = inner.name
        self.states: list[FloatArray] = []

    def step(self, t_s: float, x: FloatArray, p: FloatArray) -> ControlStep:
        self.states.append(self.plant.true_state.copy())
        return self.inner.step(t_s, x, p)


def parse_controllers(text: str) -> tuple[str, ...]:
    """``"nmpc,bolus"`` -> ``("nmpc", "bolus")``.

    Raises:
        ScenarioError: an unknown name.
    """
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for n in names:
        if n not in PLANNERS:
            raise ScenarioError(f"--controllers: unknown controller {n!r} (known: {', '.join(PLANNERS)})")
    if not names:
        raise ScenarioError("--controllers: name at least one controller")
    return names


def _constraints(scenario: Scenario) -> dict[str, tuple[str, float, float]]:
    """Label -> (state, lo, hi): the scenario's [bounds] on the plant and the planner's state bounds."""
    assert scenario.cascade is not None
    spec = scenario.spec()
    out: dict[str, tuple[str, float, float]] = {}
    bounds = {**scenario.cascade.state_bounds, **scenario.controller.mpc.state_bounds}
    for name, (lo, hi) in bounds.items():
        if name in spec.states:
            out[f"{name} in [{lo:g}, {hi:g}]"] = (name, lo, hi)
    return out


def run_one(scenario: Scenario, planner: str) -> ControllerScore:
    """Run the scenario's batch with ``planner`` on a fresh plant; score it on the true state."""
    import time

    start = time.perf_counter()
    spec = scenario.spec()
    pl = scenario.plant
    sim = scenario.new_plant(spec)
    p = twin_params(spec, scenario)
    controller = _Truth(build_cascade(scenario, spec, p, planner), sim)
    plant = InProcessPlant(ProtocolHandler(sim))
    record = MemoryRecord()
    loop = run_loop(
        spec=spec,
        plant=plant,
        estimator=build_estimator(spec, p, scenario.estimator, pl.sensors),
        controller=controller,
        clock=VirtualClock(plant.advance, scenario.loop.period_s),
        recorder=record,
        steps=scenario.loop.steps,
        period_s=scenario.loop.period_s,
    )
    truth = np.array([*controller.states, sim.true_state.copy()])
    idx = {n: i for i, n in enumerate(spec.states)}
    final = truth[-1]
    violations = {}
    for label, (name, lo, hi) in _constraints(scenario).items():
        col = truth[:, idx[name]]
        tol_lo = VIOLATION_RTOL * max(1.0, abs(lo)) if math.isfinite(lo) else 0.0
        tol_hi = VIOLATION_RTOL * max(1.0, abs(hi)) if math.isfinite(hi) else 0.0
        violations[label] = int(np.sum((col < lo - tol_lo) | (col > hi + tol_hi)))
    hard = sum(v for k, v in violations.items() if not k.startswith("Glc "))
    applied = [r for r in record.setpoints if r.state == "applied"]
    hours = scenario.loop.period_s / 3600.0
    feed = sum(r.values.get("F", 0.0) for r in applied) * hours
    heater = scenario.cascade.heater if scenario.cascade else "P_heater"
    energy = sum(r.values.get(heater, 0.0) for r in applied) * hours
    return ControllerScore(
        controller=planner,
        final_titer_mg_per_l=float(final[idx["mAb"]]),
        harvested_mg=float(final[idx["mAb"]] * final[idx["V"]]),
        max_lactate_mM=float(truth[:, idx["Lac"]].max()),
        max_ammonia_mM=float(truth[:, idx["Amm"]].max()),
        violations=violations,
        hard_violations=hard,
        feed_l=float(feed),
        energy_wh=float(energy),
        refused_writes=loop.refused_writes,
        wall_s=time.perf_counter() - start,
    )


def compare(scenario: Scenario, planners: tuple[str, ...]) -> list[ControllerScore]:
    """Score each planner on the same plant.

    Raises:
        ScenarioError: the scenario has no ``[cascade]`` table.
    """
    if scenario.cascade is None:
        raise ScenarioError(f"compare: scenario {scenario.name!r} has no [cascade] table (two-level control)")
    return [run_one(replace(scenario), planner) for planner in planners]


def format_table(scores: list[ControllerScore]) -> str:
    """A fixed-width table, with each controller's share of the oracle's harvest when the oracle ran."""
    oracle = next((s.harvested_mg for s in scores if s.controller == "oracle"), None)
    head = (
        f"{'controller':<10} {'titer mg/L':>10} {'harvest mg':>10} {'of oracle':>9} {'max Lac':>8} {'max Amm':>8} "
        f"{'hard viol':>9} {'Glc band':>8} {'feed L':>7} {'energy Wh':>9}"
    )
    lines = [head]
    for s in scores:
        share = f"{100 * s.harvested_mg / oracle:8.1f}%" if oracle else f"{'-':>9}"
        glc = sum(v for k, v in s.violations.items() if k.startswith("Glc "))
        lines.append(
            f"{s.controller:<10} {s.final_titer_mg_per_l:10.1f} {s.harvested_mg:10.1f} {share} {s.max_lactate_mM:8.2f} "
            f"{s.max_ammonia_mM:8.2f} {s.hard_violations:9d} {glc:8d} {s.feed_l:7.3f} {s.energy_wh:9.1f}"
        )
    return "\n".join(lines)


def write_compare(path: Path, scenario: Scenario, scores: list[ControllerScore]) -> None:
    """DIR/compare.json: the scenario, each controller's score, and the shares of the oracle."""
    oracle = next((s.harvested_mg for s in scores if s.controller == "oracle"), None)
    doc = {
        "scenario": {"name": scenario.name, "sha256": scenario.sha256},
        "controllers": [asdict(s) for s in scores],
        "share_of_oracle": {s.controller: s.harvested_mg / oracle for s in scores} if oracle else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
