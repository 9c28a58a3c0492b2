"""Open-loop simulation from an inputs CSV (``bioimp simulate``).

IN.csv: header ``t,<input names>`` (t in model time units); each row's inputs are held from its t to
the next row's t; the last row ends the run (its inputs are ignored). OUT.csv: header
``t,<state names>``, one row per IN row time. Lines starting with ``#`` are comments in both.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plant_models.errors import InputDataError
from plant_models.spec import ModelSpec
from twin.interfaces import FloatArray
from twin.simulator import Simulator, SimulatorConfig


@dataclass(frozen=True)
class InputProfile:
    """Times (model units, strictly increasing) and the inputs held from each time to the next."""

    t: FloatArray
    u: FloatArray


def read_inputs_csv(path: Path, spec: ModelSpec) -> InputProfile:
    """Read and validate an inputs CSV for ``spec``.

    Raises:
        InputDataError: naming the file and line of the first problem.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{path}: cannot read: {exc}") from None
    rows = [(i + 1, line) for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise InputDataError(f"{path}: no header line")
    header_line, header = rows[0][0], [c.strip() for c in next(csv.reader([rows[0][1]]))]
    if not header or header[0] != "t":
        raise InputDataError(f"{path}:{header_line}: header must start with 't'")
    names = header[1:]
    for name in names:
        if name not in spec.inputs:
            raise InputDataError(f"{path}:{header_line}: model {spec.name!r} has no input {name!r}")
    missing = [n for n in spec.inputs if n not in names]
    if missing:
        raise InputDataError(f"{path}:{header_line}: missing column for input {missing[0]!r}")
    if len(set(names)) != len(names):
        raise InputDataError(f"{path}:{header_line}: duplicate column")
    t: list[float] = []
    u: list[list[float]] = []
    for line_no, line in rows[1:]:
        cells = [c.strip() for c in next(csv.reader([line]))]
        if len(cells) != len(header):
            raise InputDataError(f"{path}:{line_no}: expected {len(header)} values, got {len(cells)}")
        try:
            values = [float(c) for c in cells]
        except ValueError:
            raise InputDataError(f"{path}:{line_no}: not a number in {line!r}") from None
        if not math.isfinite(values[0]) or (t and values[0] <= t[-1]):
            raise InputDataError(f"{path}:{line_no}: t must be finite and strictly increasing")
        row = dict(zip(names, values[1:], strict=True))
        t.append(values[0])
        u.append([row[n] for n in spec.inputs])
    if len(t) < 2:
        raise InputDataError(f"{path}: need at least two rows (the last one ends the run)")
    u_arr = np.array(u)
    if not np.all(np.isfinite(u_arr[:-1])):
        raise InputDataError(f"{path}: inputs must be finite (except on the last row)")
    return InputProfile(np.array(t), u_arr)


def simulate_openloop(
    spec: ModelSpec,
    profile: InputProfile,
    x0: Mapping[str, float] | None = None,
    params: Mapping[str, float] | None = None,
    config: SimulatorConfig | None = None,
) -> FloatArray:
    """States at every profile time (rows), starting from ``x0`` (defaults: the model's)."""
    sim = Simulator(spec, config)
    p = np.array(spec.vector("params", {**spec.nominal_params, **(params or {})}))
    x = np.array(spec.vector("states", {**spec.x0, **(x0 or {})}))
    out = [x]
    for k in range(len(profile.t) - 1):
        x = sim.step(x, profile.u[k], p, float(profile.t[k + 1] - profile.t[k]))
        out.append(x)
    return np.array(out)


def write_states_csv(path: Path, spec: ModelSpec, t: FloatArray, x: FloatArray) -> None:
    """Write ``t,<states>`` rows with a units comment."""
    units = ", ".join(f"{n} [{spec.units[n]}]" for n in spec.states)
    lines = [f"# bioimp simulate {spec.name}; t in {spec.time_unit}; {units}", ",".join(("t", *spec.states))]
    lines += [",".join(repr(float(v)) for v in (tk, *xk)) for tk, xk in zip(t, x, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
