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
from pathlib import Path

import numpy as np

from plant_models.spec import ModelSpec
from twin.interfaces import FloatArray
from twin.record import MemoryRecord
from twin.scenario import Scenario

__all__ = ["PANELS", "replay_truth", "write_batch_figure"]

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


def write_batch_figure(
    path: Path, scenario: Scenario, record: MemoryRecord, truth: tuple[FloatArray, FloatArray] | None
) -> None:
    """Write the multi-panel PNG (``truth``: :func:`replay_truth`, or None to leave it out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = scenario.spec()
    hours = spec.seconds_per_time_unit
    panels = [(title, tuple(n for n in names if n in spec.states)) for title, names in PANELS]
    panels = [(title, names) for title, names in panels if names]
    n_panels = len(panels) + 1
    fig, axes = plt.subplots(n_panels, 1, sharex=True, figsize=(9, 2.0 * n_panels + 0.8))
    t_est = np.array([e.t_s for _, e in record.estimates]) / hours
    x_est = np.array([e.x for _, e in record.estimates])
    s_est = np.array([e.x_std for _, e in record.estimates])
    assays = _assays(spec, scenario, record)
    for ax, (title, names) in zip(axes, panels, strict=False):
        for colour, name in zip(_COLOURS, names, strict=False):
            i = spec.states.index(name)
            ax.plot(t_est, x_est[:, i], color=colour, lw=1.2, label=f"{name} estimate")
            ax.fill_between(
                t_est, x_est[:, i] - 2 * s_est[:, i], x_est[:, i] + 2 * s_est[:, i], color=colour, alpha=0.2, lw=0
            )
            if truth is not None:
                ax.plot(truth[0] / hours, truth[1][:, i], color=colour, lw=0.8, ls="--", label=f"{name} true")
            if name in assays:
                ts, vs = assays[name]
                ax.plot(np.array(ts) / hours, vs, "o", color=colour, ms=3.5, label=f"{name} assay")
        units = sorted({spec.units[n] for n in names})
        ax.set_ylabel(f"{title}\n[{', '.join(units)}]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", ncol=2)
    ax = axes[-1]
    applied = sorted((r.t_s, r.values) for r in record.setpoints if r.state == "applied")
    if applied:
        t_u = np.array([t for t, _ in applied]) / hours
        for colour, name in zip(("tab:orange", "tab:brown"), spec.inputs, strict=False):
            values = np.array([v.get(name, math.nan) for _, v in applied])
            target = ax if colour == "tab:orange" else ax.twinx()
            target.step(t_u, values, where="post", color=colour, lw=1.0, label=f"{name} [{spec.units[name]}]")
            target.set_ylabel(f"{name} [{spec.units[name]}]", color=colour)
    ax.set_xlabel(f"time [{spec.time_unit}]")
    ax.grid(alpha=0.3)
    fig.suptitle(f"{scenario.name}: estimate ±2σ, assays" + (", true plant (dashed)" if truth is not None else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
