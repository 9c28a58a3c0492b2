"""Run a scenario's closed loop against any Plant and write the run directory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controllers.config import MpcConfig
from controllers.interfaces import Controller, FloatArray
from plant_models.spec import ModelSpec
from twin.clock import VirtualClock
from twin.estimator_config import build_estimator
from twin.interfaces import Plant
from twin.kpis import Trajectory, summary, trajectory
from twin.loop import LoopResult, run_loop
from twin.outputs import plot_trajectory, write_summary, write_trajectory_csv
from twin.record import MemoryRecord
from twin.scenario import Scenario


def _nmpc(spec: ModelSpec, config: MpcConfig, p: FloatArray) -> Controller:
    from controllers.nmpc import build_mpc

    return build_mpc(spec, config)


def _dompc(spec: ModelSpec, config: MpcConfig, p: FloatArray) -> Controller:
    from controllers.dompc import DoMpcController

    return DoMpcController(spec, config, p)


# Controller kinds a scenario can name → factory. Imports are deferred so a run pays only for the
# controller it uses (do-mpc's import alone costs about a second).
CONTROLLER_FACTORIES: dict[str, Callable[[ModelSpec, MpcConfig, FloatArray], Controller]] = {
    "nmpc": _nmpc,
    "do-mpc": _dompc,
}


@dataclass(frozen=True)
class RunResult:
    """A finished run: the KPI summary, the full record and the loop's counters."""

    summary: dict[str, object]
    record: MemoryRecord
    loop: LoopResult


def twin_params(spec: ModelSpec, scenario: Scenario) -> FloatArray:
    """The parameter vector the twin believes: nominal values overridden by the scenario's ``[twin]``."""
    return np.array(spec.vector("params", {**spec.nominal_params, **scenario.twin.params}))


def build_controller(scenario: Scenario, spec: ModelSpec, p: FloatArray) -> Controller:
    """The scenario's controller, built for ``spec`` with the twin's parameters ``p``."""
    if scenario.controller.kind == "cascade":  # two-level: needs the whole scenario (twin.cascade_setup)
        from twin.cascade_setup import build_cascade

        return build_cascade(scenario, spec, p)
    return CONTROLLER_FACTORIES[scenario.controller.kind](spec, scenario.controller.mpc, p)


def run_scenario(scenario: Scenario, plant: Plant, out_dir: Path | None = None) -> RunResult:
    """Run the scenario's closed loop against ``plant`` (virtual clock), recorded in memory only.

    Writes summary.json, trajectory.csv and trajectory.png when ``out_dir`` is given. ``bioimp run``
    uses :func:`twin.batch.run_batch` instead, which keeps the durable batch record.
    """
    spec = scenario.spec()
    p = twin_params(spec, scenario)
    controller = build_controller(scenario, spec, p)
    record = MemoryRecord()
    loop = run_loop(
        spec=spec,
        plant=plant,
        estimator=build_estimator(spec, p, scenario.estimator, scenario.plant.sensors),
        controller=controller,
        clock=VirtualClock(plant.advance, scenario.loop.period_s),
        recorder=record,
        steps=scenario.loop.steps,
        period_s=scenario.loop.period_s,
        budget_s=scenario.controller.budget_s,
    )
    kpis = write_outputs(scenario, spec, record, loop, controller.name, p, out_dir)
    return RunResult(kpis, record, loop)


def run_summary(
    scenario: Scenario,
    spec: ModelSpec,
    record: MemoryRecord,
    traj: Trajectory,
    loop: LoopResult,
    controller_name: str,
    p: FloatArray,
) -> dict[str, object]:
    """The KPI summary of a finished run (``traj``: :func:`twin.kpis.trajectory` of ``record``)."""
    kpis = summary(spec, scenario.controller.mpc, record, traj, loop, controller_name, p)
    kpis["scenario"] = {"name": scenario.name, "sha256": scenario.sha256}
    return kpis


def write_outputs(
    scenario: Scenario,
    spec: ModelSpec,
    record: MemoryRecord,
    loop: LoopResult,
    controller_name: str,
    p: FloatArray,
    out_dir: Path | None,
) -> dict[str, object]:
    """The KPI summary of a finished run; with ``out_dir``, also summary.json, trajectory.csv and .png."""
    traj = trajectory(spec, record)
    kpis = run_summary(scenario, spec, record, traj, loop, controller_name, p)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_summary(out_dir / "summary.json", kpis)
        write_trajectory_csv(out_dir / "trajectory.csv", spec, traj)
        plot_trajectory(out_dir / "trajectory.png", spec, traj, f"{scenario.name} — {controller_name}")
    return kpis
