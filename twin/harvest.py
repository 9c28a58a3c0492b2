"""What a batch is harvested for, at its end: the twin's final estimate and, where known, the truth.

A two-level (``[cascade]``) batch maximises a terminal quantity — for the CHO scenario ``"mAb*V"``, the
antibody mass in the vessel (titer mg/L times volume L). The loop's own summary reports the last
*measured* values, which for a CHO culture are the online probes only (titer and cells are measured by
assays, not at the harvest moment). This module reports the harvest as the twin estimates it (with its
2σ band, first-order propagation of the estimate's standard deviations) and, for a run against our own
simulated plant, as it truly was (the plant replayed from its seed and the applied inputs, after the
batch; never seen by the loop).
"""

from __future__ import annotations

import math

import numpy as np

from controllers.interfaces import FloatArray
from twin.record import MemoryRecord
from twin.scenario import Scenario

__all__ = ["harvest_kpis"]


def _value(states: tuple[str, ...], name: str, x: FloatArray) -> float:
    value = 1.0
    for part in name.split("*"):
        value *= float(x[states.index(part)])
    return value


def _two_sigma(states: tuple[str, ...], name: str, x: FloatArray, std: FloatArray) -> float:
    # d(prod)/d(part) = prod / part; independent first-order terms (the estimate's correlations are not
    # kept in the record).
    parts = name.split("*")
    var = 0.0
    for i, part in enumerate(parts):
        others = math.prod(float(x[states.index(q)]) for j, q in enumerate(parts) if j != i)
        var += (others * float(std[states.index(part)])) ** 2
    return 2.0 * math.sqrt(var)


def harvest_kpis(scenario: Scenario, record: MemoryRecord, truth: FloatArray | None) -> dict[str, object]:
    """The harvest of a finished two-level batch (empty for other scenarios).

    Args:
        scenario: the batch's scenario.
        record: the batch as recorded.
        truth: the plant's true states per step (:func:`twin.batch_figure.replay_truth`), or None.

    Returns:
        ``{"harvest": {name: {"estimate", "estimate_2sigma", "true"}}, "true_min": {state: min},
        "true_max": {state: max}}``; the true values only with ``truth``.
    """
    if scenario.cascade is None or not record.estimates:
        return {}
    states = scenario.spec().states
    names = [n for n in scenario.cascade.objective.terminal if all(p in states for p in n.split("*"))]
    final = record.estimates[-1][1]
    x, std = np.asarray(final.x), np.asarray(final.x_std)
    harvest: dict[str, dict[str, float | None]] = {}
    for name in names:
        harvest[name] = {
            "estimate": _value(states, name, x),
            "estimate_2sigma": _two_sigma(states, name, x, std),
            "true": None if truth is None else _value(states, name, truth[-1]),
        }
    out: dict[str, object] = {"harvest": harvest}
    if truth is not None:
        out["true_min"] = {name: float(truth[:, i].min()) for i, name in enumerate(states)}
        out["true_max"] = {name: float(truth[:, i].max()) for i, name in enumerate(states)}
    return out
