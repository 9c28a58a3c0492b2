"""``bioimp optimize``: the offline optimal input profile over the whole batch, on the nominal model.

For a scenario with two-level control (``[cascade]``) the problem is the planner's: its model (e.g.
``cho_fedbatch``: feed and temperature setpoint), ``[cascade.objective]`` and ``[cascade.bounds]``. For
any other scenario it is the scenario's model with its ``[objective]`` and ``[bounds]``: built-in or
user-supplied, the same code. The batch lasts ``loop.steps * loop.period_s``; the start is the model's
initial state with ``[plant] x0`` and ``[estimator] x0`` over it; the parameters are the twin's.

Writes ``profile.csv`` (``t,<inputs>``: what ``bioimp simulate --inputs`` reads) and ``optimize.json``
(objective, solver status, iterations, the predicted final state).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from controllers.batch_ocp import BatchOcp, BatchOcpConfig, BatchSolution
from plant_models.spec import ModelSpec
from twin.cascade_setup import batch_end_s
from twin.scenario import Scenario

__all__ = ["OptimizeResult", "optimize_scenario", "write_optimize"]


@dataclass(frozen=True)
class OptimizeResult:
    """The model the profile is for, and the solution."""

    spec: ModelSpec
    solution: BatchSolution
    x0: dict[str, float]


def _problem(scenario: Scenario, intervals: int | None) -> tuple[ModelSpec, BatchOcpConfig]:
    if scenario.cascade is not None:
        section = scenario.cascade
        cfg = section.ocp_config()
        return section.spec(), replace(cfg, intervals=intervals or cfg.intervals)
    spec = scenario.spec()
    mpc = scenario.controller.mpc
    n = intervals or scenario.loop.steps
    # As many RK4 sub-steps per model time unit as the controller uses, at least.
    per_interval = batch_end_s(scenario) / n / mpc.step_s
    return spec, BatchOcpConfig(
        intervals=n,
        objective=mpc.objective,
        state_bounds=mpc.state_bounds,
        input_bounds=mpc.input_bounds,
        substeps=max(mpc.substeps, math.ceil(mpc.substeps * per_interval)),
        max_iter=max(mpc.max_iter, 500),
    )


def optimize_scenario(scenario: Scenario, intervals: int | None = None) -> OptimizeResult:
    """Solve the scenario's whole-batch problem on the nominal model (the twin's parameters)."""
    spec, config = _problem(scenario, intervals)
    plant = scenario.spec()
    p_all = {**plant.nominal_params, **scenario.twin.params}
    x_all = {**plant.x0, **scenario.plant.x0, **scenario.estimator.x0}
    p = np.array([p_all.get(n, spec.nominal_params[n]) for n in spec.params])
    x0 = {n: float(x_all.get(n, spec.x0[n])) for n in spec.states}
    ocp = BatchOcp(spec, config)
    sol = ocp.solve(np.array(list(x0.values())), p, batch_end_s(scenario) / spec.seconds_per_time_unit)
    return OptimizeResult(spec, sol, x0)


def write_optimize(out: Path, scenario: Scenario, result: OptimizeResult) -> tuple[Path, Path]:
    """Write DIR/profile.csv and DIR/optimize.json; return their paths."""
    spec, sol = result.spec, result.solution
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# bioimp optimize {scenario.name}: offline optimal inputs of {spec.name} on the nominal model",
        f"# t in {spec.time_unit}; each row's inputs are held until the next row; the last row ends the batch",
        ",".join(("t", *spec.inputs)),
    ]
    rows = [*sol.u, sol.u[-1]]
    for t, u in zip(sol.t, rows, strict=True):
        lines.append(",".join(repr(float(v)) for v in (t, *u)))
    csv_path = out / "profile.csv"
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    doc = {
        "scenario": {"name": scenario.name, "sha256": scenario.sha256},
        "model": spec.name,
        "objective": sol.objective,
        "status": sol.status,
        "iterations": sol.iterations,
        "compute_s": sol.compute_s,
        "intervals": len(sol.u),
        "x0": result.x0,
        "predicted_final_state": {n: float(v) for n, v in zip(spec.states, sol.x[-1], strict=True)},
    }
    json_path = out / "optimize.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return csv_path, json_path
