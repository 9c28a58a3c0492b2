"""Key performance indicators of a finished closed-loop run, computed from what was recorded."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from controllers.config import MpcConfig
from plant_models.spec import ModelSpec
from twin.interfaces import FloatArray, Measurements
from twin.loop import LoopResult
from twin.record import MemoryRecord


@dataclass(frozen=True)
class Trajectory:
    """The run as arrays: ``t_s`` (steps+1), measured states ``x`` (steps+1, nx), applied ``u``
    (steps+1, nu): the input the plant held from each time to the next (after a refused write, the
    previous one), NaN on the last row."""

    t_s: FloatArray
    x: FloatArray
    u: FloatArray


def measured_state(spec: ModelSpec, meas: Measurements) -> list[float]:
    """The state readings of a ``read`` reply in state order (NaN where a state has no usable reading)."""
    out = []
    for name in spec.states:
        reading = meas.values.get(name)
        value = reading.value if reading is not None else None
        out.append(value if value is not None and math.isfinite(value) else math.nan)
    return out


def trajectory(spec: ModelSpec, record: MemoryRecord) -> Trajectory:
    """Assemble the measured-state and applied-input trajectory from a record."""
    t = np.array([m.time_s for _, m in record.reads])
    x = np.array([measured_state(spec, m) for _, m in record.reads])
    u = np.full((len(t), spec.nu), math.nan)
    # A step whose read was lost (plant unreachable, a period skipped) has no row: index by step, not count.
    row_of_step = {step: i for i, (step, _) in enumerate(record.reads)}
    for row in record.setpoints:
        if row.state == "applied":
            u[row_of_step[row.step]] = [row.values[n] for n in spec.inputs]
    held = initial_inputs(spec, record)
    for k in range(len(t) - 1):
        if np.isnan(u[k]).any():
            u[k] = held
        held = u[k]
    return Trajectory(t, x, u)


def initial_inputs(spec: ModelSpec, record: MemoryRecord) -> FloatArray:
    """The actuator values the plant reported before the first step (safe values if it did not)."""
    first = record.reads[0][1].values
    return np.array([
        first[n].value if n in first and first[n].value is not None else spec.input_safe[n] for n in spec.inputs
    ])


def closed_loop_objective(spec: ModelSpec, mpc: MpcConfig, traj: Trajectory, p: FloatArray, u0: FloatArray) -> float:
    """The scenario's objective evaluated on what really happened (same terms as the NMPC's).

    ``sum_k stage(x_k) + terminal(x_N) + sum_k delta_u · (u_k - u_{k-1})²`` with ``u_{-1} = u0``, the
    input applied before the first step.
    """

    def weighted(weights: Mapping[str, float], x: FloatArray, u: FloatArray) -> float:
        y: FloatArray | None = None  # the outputs, evaluated only when a weight names one (a CasADi call)
        total = 0.0
        for name, w in weights.items():
            if name in spec.states:
                value = x[spec.states.index(name)]
            else:
                if y is None:
                    y = np.asarray(spec.h(x, u, p), dtype=float).ravel()
                value = y[spec.outputs.index(name)]
            total += w * float(value)
        return total

    n = len(traj.t_s) - 1
    du_w = np.array([mpc.objective.delta_u.get(name, 0.0) for name in spec.inputs])
    cost = 0.0
    last_u = u0
    for k in range(n):
        cost += weighted(mpc.objective.stage, traj.x[k], traj.u[k])
        cost += float(du_w @ (traj.u[k] - last_u) ** 2)
        last_u = traj.u[k]
    cost += weighted(mpc.objective.terminal, traj.x[n], np.zeros(spec.nu))
    return cost


def constraint_violation_max(spec: ModelSpec, mpc: MpcConfig, traj: Trajectory) -> float:
    """Largest amount (model units) by which any measured state or applied input left its bounds."""
    xb, ub = mpc.bounds(spec)
    worst = 0.0
    for values, bounds in ((traj.x, xb), (traj.u[:-1], ub)):
        for j, (lo, hi) in enumerate(bounds):
            col = values[:, j]
            col = col[np.isfinite(col)]
            if col.size:
                worst = max(worst, float(np.max(lo - col)), float(np.max(col - hi)))
    return worst


def summary(
    spec: ModelSpec,
    mpc: MpcConfig,
    record: MemoryRecord,
    traj: Trajectory,
    result: LoopResult,
    controller_name: str,
    p: FloatArray,
) -> dict[str, object]:
    """The summary.json content of a run (``traj`` is :func:`trajectory` of ``record``)."""
    step_ms = np.array([c.compute_s for _, _, c in record.controls]) * 1e3
    u0 = initial_inputs(spec, record)
    return {
        "model": spec.name,
        "final_states": {n: float(v) for n, v in zip(spec.states, traj.x[-1], strict=True)},
        "final_time_s": float(traj.t_s[-1]),
        "objective": closed_loop_objective(spec, mpc, traj, p, u0),
        "steps": result.steps,
        "controller": {
            "name": controller_name,
            "step_ms": {
                "p50": float(np.percentile(step_ms, 50)),
                "p90": float(np.percentile(step_ms, 90)),
                "p99": float(np.percentile(step_ms, 99)),
                "max": float(np.max(step_ms)),
            },
            "fallbacks": result.fallbacks,
        },
        "constraint_violation_max": constraint_violation_max(spec, mpc, traj),
        "deadline_misses": result.deadline_misses,
        "refused_writes": result.refused_writes,
        "events": len(record.events),
    }
