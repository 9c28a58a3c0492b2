"""Batch data for the fit: from a batch record (``DIR/record.sqlite``) or a plain CSV, one shape.

A :class:`BatchData` holds, in model time units: the samples of each model signal (with where each came
from, for error messages), the inputs held piecewise constant from their change times, the initial
conditions (the start values of the per-batch initial states) and the sample volumes removed from the
vessel.

**Record** (any directory ``bioimp run`` wrote): read read-only. The run row gives the model and the
scenario (its text is in the record): ``[plant.sensors]`` says which signal each device measures and
how much volume each assay sample removes; ``[plant] x0`` the initial conditions. Samples of quality
``good`` are used, each (device, sample time) once (a device repeats its last sample until a new one
arrives). The inputs are the ``applied`` setpoints, each held from its plant time (the model's safe
values before the first).

**CSV**: header ``t,<signal names>`` (t in the model's time unit, strictly increasing; signals are model
states or outputs), empty cells for missing samples. Inputs and initial conditions come from a sidecar
TOML file next to it (``batch.csv`` -> ``batch.toml``) or, without one, from ``#`` comment lines at the
top of the CSV (TOML with the ``#`` stripped)::

    x0 = { Xv = 3.0e8, Glc = 30.0, V = 1.0 }      # initial conditions (others: the model's x0)
    inputs = { t = [0, 48, 96], F = [0.0, 0.002, 0.002], T = [36.5, 36.5, 33.0] }   # held from each t
    # or inputs = "batch_inputs.csv"  (header t,<inputs>, as for bioimp simulate; relative to the CSV)
    # or constant: inputs = { F = 0.0, T = 36.5 }
    sample_volume = 0.002                          # removed from the vessel at each sampled row
    volume_state = "V"

Bad data is an :class:`~plant_models.errors.InputDataError` (exit 2) naming the file and row.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import sqlite3
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plant_models.errors import InputDataError, ScenarioError
from plant_models.spec import ModelSpec
from twin.fit.spec import FitSpec
from twin.interfaces import FloatArray

__all__ = ["BatchData", "Sample", "load_batches", "read_csv_batch", "read_record_batch"]

RECORD_FILE = "record.sqlite"


@dataclass(frozen=True)
class Sample:
    """One measured value: model time, value, and where it came from (``file:line`` or record row)."""

    t: float
    value: float
    where: str


@dataclass(frozen=True)
class BatchData:
    """One batch, in model time units.

    Attributes:
        name: short name (file stem or run directory name).
        source: the file or directory read.
        samples: signal -> samples, in time order (only the signals the fit uses).
        input_t: times from which each row of ``input_u`` is held (first is <= 0).
        input_u: inputs in the model's order, one row per ``input_t``.
        x0: every state's initial value (a start value where the state's initial value is estimated).
        removals: (time, state, amount): a sample volume leaving the vessel right after ``time``.
    """

    name: str
    source: str
    samples: Mapping[str, tuple[Sample, ...]]
    input_t: FloatArray
    input_u: FloatArray
    x0: Mapping[str, float]
    removals: tuple[tuple[float, str, float], ...] = field(default=())

    @property
    def t_end(self) -> float:
        """Time of the last sample."""
        return max(s[-1].t for s in self.samples.values() if s)

    def inputs_at(self, t: float) -> FloatArray:
        """The inputs held at time ``t`` (the last change at or before it)."""
        i = int(np.searchsorted(self.input_t, t + 1e-9, side="right")) - 1
        return np.asarray(self.input_u[max(i, 0)], dtype=float)


def _check_value(spec: ModelSpec, signal: str, value: float, where: str) -> None:
    if not math.isfinite(value):
        raise InputDataError(f"{where}: {signal} is not a finite number")
    lo = spec.state_bounds.get(signal, (-math.inf, math.inf))[0] if signal in spec.states else -math.inf
    if lo >= 0 and value < 0:
        unit = spec.units[signal]
        raise InputDataError(f"{where}: negative {signal} ({value:g} {unit}): a concentration cannot be < 0")


def _finish(
    name: str,
    source: str,
    samples: dict[str, list[Sample]],
    fit: FitSpec,
    input_t: Sequence[float],
    input_u: Sequence[Sequence[float]],
    x0: Mapping[str, float],
    removals: Sequence[tuple[float, str, float]],
) -> BatchData:
    if not any(samples.get(s) for s in fit.noise):
        signals = ", ".join(fit.noise)
        raise InputDataError(f"{source}: the batch has no data for any fitted signal ({signals})")
    times = {x.t for s in samples.values() for x in s}
    if len(times) < 2:
        raise InputDataError(f"{source}: every sample is at one time; a batch needs samples at two times at least")
    t = np.asarray(input_t, dtype=float)
    if t[0] > min(times) + 1e-9:
        raise InputDataError(f"{source}: the inputs start at t={t[0]:g}, after the first sample")
    return BatchData(
        name=name,
        source=source,
        samples={k: tuple(v) for k, v in samples.items() if v},
        input_t=t,
        input_u=np.asarray(input_u, dtype=float),
        x0=dict(x0),
        removals=tuple(removals),
    )


# --- records ---------------------------------------------------------------------------------------


def read_record_batch(directory: Path, fit: FitSpec, spec: ModelSpec) -> BatchData:
    """Read one batch from a run directory's record (read-only).

    Raises:
        InputDataError: not a record, another model, or bad samples (naming the record row).
    """
    from twin.record_read import open_readonly, read_run
    from twin.scenario import parse_scenario

    path = directory / RECORD_FILE
    try:
        with open_readonly(path) as conn:
            run = read_run(conn)
            sample_rows = conn.execute(
                "SELECT rec, device, value, sample_t_s, quality FROM samples ORDER BY rec"
            ).fetchall()
            setpoint_rows = conn.execute(
                "SELECT rec, t_s, setpoints FROM setpoints WHERE state = 'applied' ORDER BY rec"
            ).fetchall()
    except (sqlite3.Error, TypeError) as exc:
        raise InputDataError(f"{path}: not a readable batch record ({exc})") from None
    if run.model != spec.name:
        raise InputDataError(f"{path}: the batch ran model {run.model!r}; the fit spec's model is {spec.name!r}")
    try:
        scenario = parse_scenario(run.scenario_source, f"{path} (recorded scenario)")
    except ScenarioError as exc:
        raise InputDataError(f"{path}: the recorded scenario does not load: {exc}") from None
    sensors = scenario.plant.sensors
    measures = {d.name: d.measures for d in sensors.devices} if sensors else {n: n for n in spec.outputs}
    assays = {d.name for d in sensors.assays} if sensors else set()
    tu = spec.seconds_per_time_unit
    samples: dict[str, list[Sample]] = {s: [] for s in fit.noise}
    seen: set[tuple[str, float]] = set()
    assay_times: set[float] = set()
    for rec, device, value, sample_t_s, quality in sample_rows:
        if device in assays and sample_t_s is not None and quality != "missing":
            assay_times.add(float(sample_t_s))
        signal = measures.get(device)
        if signal is None or signal not in samples or quality != "good" or value is None:
            continue
        if (device, sample_t_s) in seen:
            continue  # the same sample read again
        seen.add((device, sample_t_s))
        where = f"{path}: samples rec {rec} ({device})"
        _check_value(spec, signal, float(value), where)
        t = float(sample_t_s) / tu
        previous = samples[signal]
        if previous and t < previous[-1].t:
            raise InputDataError(f"{where}: sample time {sample_t_s:g} s is before the previous one (not monotonic)")
        previous.append(Sample(t, float(value), where))
    input_t = [0.0]
    input_u = [[spec.input_safe[n] for n in spec.inputs]]
    for rec, t_s, setpoints in setpoint_rows:
        values: dict[str, Any] = json.loads(setpoints)
        row = dict(zip(spec.inputs, input_u[-1], strict=True))
        row.update({k: float(v) for k, v in values.items() if k in row})
        t = float(t_s) / tu
        if t < input_t[-1]:
            raise InputDataError(f"{path}: setpoints rec {rec}: time {t_s:g} s is before the previous setpoint")
        if t <= input_t[-1] + 1e-12:
            input_u[-1] = [row[n] for n in spec.inputs]
        elif [row[n] for n in spec.inputs] == input_u[-1]:
            continue  # the same setpoint again: no change of input, no shooting node
        else:
            input_t.append(t)
            input_u.append([row[n] for n in spec.inputs])
    removals: list[tuple[float, str, float]] = []
    if sensors and sensors.assays and sensors.assay_volume > 0:
        removals = [(t / tu, sensors.volume_state, sensors.assay_volume) for t in sorted(assay_times)]
    x0 = {**spec.x0, **scenario.plant.x0}
    return _finish(directory.name, str(directory), samples, fit, input_t, input_u, x0, removals)


# --- CSV -------------------------------------------------------------------------------------------


def _sidecar(path: Path, header_lines: list[str]) -> tuple[dict[str, Any], str]:
    side = path.with_suffix(".toml")
    if side.exists():
        try:
            return tomllib.loads(side.read_text(encoding="utf-8")), str(side)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InputDataError(f"{side}: cannot read the batch's sidecar: {exc}") from None
    text = "\n".join(line.lstrip()[1:] for line in header_lines)
    try:
        return tomllib.loads(text), f"{path} (header comments)"
    except tomllib.TOMLDecodeError as exc:
        raise InputDataError(f"{path}: the header comments are not TOML (inputs, x0): {exc}") from None


def _csv_inputs(
    meta: Mapping[str, Any], where: str, path: Path, spec: ModelSpec
) -> tuple[list[float], list[list[float]]]:
    from twin.openloop import read_inputs_csv

    raw = meta.get("inputs")
    if raw is None:
        raise InputDataError(f"{where}: no inputs: give inputs = {{ t = [...], <input> = [...] }} or a file")
    if isinstance(raw, str):
        profile = read_inputs_csv(path.parent / raw, spec)
        return [float(t) for t in profile.t], [list(map(float, row)) for row in profile.u]
    if not isinstance(raw, Mapping):
        raise InputDataError(f"{where}: inputs: expected a table or a file name, got {raw!r}")
    unknown = [k for k in raw if k != "t" and k not in spec.inputs]
    if unknown:
        raise InputDataError(f"{where}: inputs.{unknown[0]}: model {spec.name!r} has no input {unknown[0]!r}")
    missing = [n for n in spec.inputs if n not in raw]
    if missing:
        raise InputDataError(f"{where}: inputs: no value for input {missing[0]!r}")
    times = raw.get("t", [0.0])
    columns = {n: raw[n] if isinstance(raw[n], list) else [raw[n]] * len(times) for n in spec.inputs}
    try:
        t = [float(v) for v in times]
        u = [[float(columns[n][i]) for n in spec.inputs] for i in range(len(t))]
    except (TypeError, ValueError, IndexError):
        raise InputDataError(f"{where}: inputs: every input needs one number per time in inputs.t") from None
    if any(len(c) != len(t) for c in columns.values()):
        raise InputDataError(f"{where}: inputs: every input needs one number per time in inputs.t")
    if any(b <= a for a, b in itertools.pairwise(t)) or not all(map(math.isfinite, t)):
        raise InputDataError(f"{where}: inputs.t must be finite and strictly increasing")
    return t, u


def read_csv_batch(path: Path, fit: FitSpec, spec: ModelSpec) -> BatchData:
    """Read one batch from a CSV file and its sidecar (or header comments).

    Raises:
        InputDataError: naming the file and line of the first problem.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{path}: cannot read: {exc}") from None
    header_comments: list[str] = []
    for line in lines:
        if line.lstrip().startswith("#"):
            header_comments.append(line)
        elif line.strip():
            break
    rows = [(i + 1, line) for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise InputDataError(f"{path}: no header line (t,<signal names>)")
    header_no = rows[0][0]
    header = [c.strip() for c in next(csv.reader([rows[0][1]]))]
    if header[0] != "t":
        raise InputDataError(f"{path}:{header_no}: the header must start with 't'")
    signals = header[1:]
    known = set(spec.states) | set(spec.outputs)
    for s in signals:
        if s not in known:
            raise InputDataError(
                f"{path}:{header_no}: unknown signal {s!r}: model {spec.name!r} has no state or output of that name"
            )
    if len(set(signals)) != len(signals):
        raise InputDataError(f"{path}:{header_no}: a signal appears twice in the header")
    meta, where = _sidecar(path, header_comments)
    for key in meta:
        if key not in ("x0", "inputs", "sample_volume", "volume_state"):
            raise InputDataError(f"{where}: {key}: unknown key (known: x0, inputs, sample_volume, volume_state)")
    samples: dict[str, list[Sample]] = {s: [] for s in fit.noise}
    sampled_t: list[float] = []
    last_t: float | None = None
    for line_no, line in rows[1:]:
        cells = [c.strip() for c in next(csv.reader([line]))]
        at = f"{path}:{line_no}"
        if len(cells) != len(header):
            raise InputDataError(f"{at}: expected {len(header)} cells, got {len(cells)}")
        try:
            t = float(cells[0])
            values = [float(c) if c else None for c in cells[1:]]
        except ValueError:
            raise InputDataError(f"{at}: not a number in {line!r}") from None
        if not math.isfinite(t):
            raise InputDataError(f"{at}: t is not finite")
        if last_t is not None and t <= last_t:
            raise InputDataError(f"{at}: t = {t:g} is not after the previous row's t = {last_t:g} (time must increase)")
        last_t = t
        for s, v in zip(signals, values, strict=True):
            if v is None:
                continue
            _check_value(spec, s, v, at)
            if s in samples:
                samples[s].append(Sample(t, v, at))
        if any(v is not None for v in values):
            sampled_t.append(t)
    input_t, input_u = _csv_inputs(meta, where, path, spec)
    x0_raw = meta.get("x0", {})
    if not isinstance(x0_raw, Mapping):
        raise InputDataError(f"{where}: x0: expected a table of state = value")
    for k, v in x0_raw.items():
        if k not in spec.states:
            raise InputDataError(f"{where}: x0.{k}: model {spec.name!r} has no state {k!r}")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise InputDataError(f"{where}: x0.{k}: expected a number, got {v!r}")
    volume = meta.get("sample_volume", 0.0)
    state = meta.get("volume_state", "V")
    if isinstance(volume, bool) or not isinstance(volume, int | float) or volume < 0:
        raise InputDataError(f"{where}: sample_volume: expected a number >= 0, got {volume!r}")
    if volume > 0 and state not in spec.states:
        raise InputDataError(f"{where}: volume_state: model {spec.name!r} has no state {state!r}")
    removals = [(t, str(state), float(volume)) for t in sampled_t] if volume > 0 else []
    x0 = {**spec.x0, **{k: float(v) for k, v in x0_raw.items()}}
    return _finish(path.stem, str(path), samples, fit, input_t, input_u, x0, removals)


def load_batches(paths: Sequence[str | Path], fit: FitSpec, spec: ModelSpec) -> list[BatchData]:
    """Read every batch: a run directory, a CSV file, or a folder of run directories and CSV files.

    Raises:
        InputDataError: a path is none of these, or its data is bad.
    """
    batches: list[BatchData] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and (path / RECORD_FILE).exists():
            batches.append(read_record_batch(path, fit, spec))
        elif path.is_dir():
            found = sorted(
                [p for p in path.iterdir() if p.is_dir() and (p / RECORD_FILE).exists()]
                + [p for p in path.iterdir() if p.suffix == ".csv"]
            )
            if not found:
                raise InputDataError(f"{path}: no batch records (*/record.sqlite) and no CSV files in this folder")
            batches.extend(load_batches(found, fit, spec))
        elif path.is_file() and path.suffix.lower() == ".csv":
            batches.append(read_csv_batch(path, fit, spec))
        else:
            raise InputDataError(f"{path}: not a run directory (with record.sqlite), a folder of them, or a CSV file")
    names = [b.name for b in batches]
    for n in names:
        if names.count(n) > 1:
            raise InputDataError(f"two batches are named {n!r} ({', '.join(b.source for b in batches if b.name == n)})")
    if not batches:
        raise InputDataError("no batch data given")
    return batches
