"""Run outputs: summary.json, trajectory.csv and trajectory.png in a run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from plant_models.spec import ModelSpec
from twin.figures import FigureSpec, Panel, Series, render
from twin.kpis import Trajectory


def write_summary(path: Path, summary: dict[str, object]) -> None:
    """Write the KPI summary as indented JSON; a value that is not a finite number (a state no sensor
    measures at the end) is ``null``, since NaN is not JSON."""
    path.write_text(json.dumps(_finite_or_null(summary), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _finite_or_null(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value


def write_trajectory_csv(path: Path, spec: ModelSpec, traj: Trajectory) -> None:
    """Write ``t,<states>,<inputs>`` with t in model time units; the input on a row is held until the
    next row (the last row's inputs are empty)."""
    scale = spec.seconds_per_time_unit
    units = ", ".join(f"{n} [{spec.units[n]}]" for n in (*spec.states, *spec.inputs))
    lines = [
        f"# bioimp closed-loop trajectory of {spec.name}; t in {spec.time_unit}; {units}",
        "# row k: states measured at t, inputs applied on [t, next t)",
        ",".join(("t", *spec.states, *spec.inputs)),
    ]
    for t, x, u in zip(traj.t_s, traj.x, traj.u, strict=True):
        cells = [repr(float(t / scale)), *(repr(float(v)) for v in x)]
        cells += ["" if np.isnan(v) else repr(float(v)) for v in u]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def trajectory_figure(spec: ModelSpec, traj: Trajectory, title: str) -> FigureSpec:
    """trajectory.png as data: one panel per state (line) and per input (held steps) against time."""
    t = traj.t_s / spec.seconds_per_time_unit
    panels = [
        Panel(f"{name}\n[{spec.units[name]}]", (Series(t, traj.x[:, i], "tab:blue"),))
        for i, name in enumerate(spec.states)
    ]
    panels += [
        Panel(f"{name}\n[{spec.units[name]}]", (Series(t, traj.u[:, i], "tab:orange", style="step"),))
        for i, name in enumerate(spec.inputs)
    ]
    return FigureSpec(
        title=title,
        xlabel=f"time [{spec.time_unit}]",
        panels=tuple(panels),
        width_in=8.0,
        panel_height_in=1.7,
        extra_height_in=0.6,
        dpi=100,
        margins_in=(1.05, 0.15, 0.45, 0.5),
    )


def plot_trajectory(path: Path, spec: ModelSpec, traj: Trajectory, title: str) -> None:
    """One panel per state and per input against time, saved as PNG (in this process)."""
    render(path, trajectory_figure(spec, traj, title))
