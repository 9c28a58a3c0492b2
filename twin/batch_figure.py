"""The batch figure of a run with instruments: what the twin believed, what the lab measured, and the truth.

One panel per group: viable cells; glucose and glutamine; lactate and ammonia; titer; volume;
temperature; feed and heater power. Each state shows the twin's estimate with its ±2σ band (from the
record), the assay results at their sample times, and, when the plant was the scenario's simulated plant,
its true state.

**Where the truth comes from.** The loop never sees the plant's true state. After the batch, the plant
is rebuilt from the scenario (same seed: same true parameters, same process noise stream) and the
record's applied setpoints are replayed on it period by period: the simulated plant is deterministic
given its seed and its inputs, so this reproduces the true trajectory. It is only done when ``bioimp
run`` started the plant itself (with ``--plant`` the plant may be anything).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from plant_models.spec import ModelSpec
from twin.figures import Band, FigureSpec, Panel, Series, render
from twin.interfaces import FloatArray
from twin.record import MemoryRecord
from twin.scenario import Scenario

__all__ = ["PANELS", "batch_figure", "replay_truth", "write_batch_figure"]

#: Panel title -> states drawn in it (those the model has).
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("viable cells", ("Xv",)),
    ("glucose, glutamine", ("Glc", "Gln")),
    ("lactate, ammonia", ("Lac", "Amm")),
    ("titer", ("mAb",)),
    ("volume", ("V",)),
    ("temperature", ("T",)),
)
_COLOURS = ("tab:blue", "tab:green", "tab:red", "tab:purple")


def replay_truth(scenario: Scenario, record: MemoryRecord) -> tuple[FloatArray, FloatArray]:
    """The plant's true states at each recorded step: the scenario's plant, rebuilt and replayed.

    Returns ``(t_s, x)`` with one row per step plus the final state.
    """
    spec = scenario.spec()
    sim = scenario.new_plant(spec)
    applied = {row.step: row.values for row in record.setpoints if row.state == "applied"}
    t = [sim.time_s]
    x = [sim.true_state.copy()]
    for step in range(scenario.loop.steps):
        if step in applied:
            sim.apply(applied[step])
        sim.advance(scenario.loop.period_s)
        t.append(sim.time_s)
        x.append(sim.true_state.copy())
    return np.array(t), np.array(x)


def _assays(spec: ModelSpec, scenario: Scenario, record: MemoryRecord) -> dict[str, tuple[list[float], list[float]]]:
    """State -> (sample times s, values) of every device measuring it, each sample once."""
    sensors = scenario.plant.sensors
    measures = {d.name: d.measures for d in sensors.assays} if sensors else {}
    out: dict[str, tuple[list[float], list[float]]] = {}
    seen: set[tuple[str, int]] = set()
    for _, meas in record.reads:
        for device, reading in meas.values.items():
            state = measures.get(device)
            if state is None or reading.value is None or (device, reading.seq) in seen:
                continue
            seen.add((device, reading.seq))
            ts, vs = out.setdefault(state, ([], []))
            ts.append(reading.t_s)
            vs.append(reading.value)
    return out


def batch_figure(scenario: Scenario, record: MemoryRecord, truth: tuple[FloatArray, FloatArray] | None) -> FigureSpec:
    """The batch figure as data (``truth``: :func:`replay_truth`, or None to leave it out)."""
    spec = scenario.spec()
    hours = spec.seconds_per_time_unit
    groups = [(title, tuple(n for n in names if n in spec.states)) for title, names in PANELS]
    t_est = np.array([e.t_s for _, e in record.estimates]) / hours
    x_est = np.array([e.x for _, e in record.estimates])
    s_est = np.array([e.x_std for _, e in record.estimates])
    assays = _assays(spec, scenario, record)
    panels: list[Panel] = []
    for title, names in groups:
        if not names:
            continue
        items: list[Series | Band] = []
        for colour, name in zip(_COLOURS, names, strict=False):
            i = spec.states.index(name)
            items.append(Series(t_est, x_est[:, i], colour, f"{name} estimate", width=1.2))
            items.append(Band(t_est, x_est[:, i] - 2 * s_est[:, i], x_est[:, i] + 2 * s_est[:, i], colour))
            if truth is not None:
                items.append(Series(truth[0] / hours, truth[1][:, i], colour, f"{name} true", "dashed", 0.8))
            if name in assays:
                ts, vs = assays[name]
                items.append(Series(np.array(ts) / hours, np.array(vs), colour, f"{name} assay", "dots", 3.5))
        units = sorted({spec.units[n] for n in names})
        panels.append(Panel(f"{title}\n[{', '.join(units)}]", tuple(items), legend=True))
    # The applied inputs: the first on the left axis, the second (if any) on a right axis of its own.
    applied = sorted((r.t_s, r.values) for r in record.setpoints if r.state == "applied")
    inputs: list[Panel] = []
    if applied:
        t_u = np.array([t for t, _ in applied]) / hours
        for colour, name in zip(("tab:orange", "tab:brown"), spec.inputs, strict=False):
            values = np.array([v.get(name, math.nan) for _, v in applied])
            label = f"{name} [{spec.units[name]}]"
            inputs.append(Panel(label, (Series(t_u, values, colour, label, "step", 1.0),), ylabel_colour=colour))
    if not inputs:
        panels.append(Panel("", ()))
    else:
        panels.append(replace(inputs[0], right=inputs[1] if len(inputs) > 1 else None))
    title = f"{scenario.name}: estimate ±2σ, assays" + (", true plant (dashed)" if truth is not None else "")
    return FigureSpec(
        title=title,
        xlabel=f"time [{spec.time_unit}]",
        panels=tuple(panels),
        width_in=9.0,
        panel_height_in=2.0,
        extra_height_in=0.8,
        dpi=90,
        margins_in=(1.05, 0.7, 0.5, 0.5),
    )


def write_batch_figure(
    path: Path, scenario: Scenario, record: MemoryRecord, truth: tuple[FloatArray, FloatArray] | None
) -> None:
    """Write the multi-panel PNG in this process (``truth``: :func:`replay_truth`, or None to leave it out)."""
    render(path, batch_figure(scenario, record, truth))
