"""Reading a batch record back: the run row, and the loop's history as a :class:`MemoryRecord`.

KPIs, the report, the export and resume all read through here, so they see the record the same way.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twin.batch_record import decode_vector
from twin.interfaces import ControlStep, Estimate, Measurements, Reading
from twin.record import EventRow, MemoryRecord, SetpointRow, SetpointState

__all__ = ["RunInfo", "has_event", "last_read_time_s", "load_history", "open_readonly", "read_run"]


@dataclass(frozen=True)
class RunInfo:
    """The run row of a record."""

    rec: int
    started_utc: str
    operator: str
    scenario_name: str
    scenario_sha256: str
    scenario_source: str
    software: dict[str, str]
    model: str
    controller: str
    plant_endpoint: str
    plant_client_id: str
    plant_hello: dict[str, Any]
    durability: str
    states: tuple[str, ...]
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    period_s: float
    steps: int


@contextmanager
def open_readonly(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the record at ``path`` (closed on exit)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def read_run(conn: sqlite3.Connection) -> RunInfo:
    """The (first) run row."""
    row = conn.execute(
        "SELECT rec, started_utc, operator, scenario_name, scenario_sha256, scenario_source, software, model, "
        "controller, plant_endpoint, plant_client_id, plant_hello, durability, signals, period_s, steps "
        "FROM run ORDER BY rec LIMIT 1"
    ).fetchone()
    signals = json.loads(row[13])
    return RunInfo(
        rec=row[0],
        started_utc=row[1],
        operator=row[2],
        scenario_name=row[3],
        scenario_sha256=row[4],
        scenario_source=row[5],
        software=json.loads(row[6]),
        model=row[7],
        controller=row[8],
        plant_endpoint=row[9],
        plant_client_id=row[10],
        plant_hello=json.loads(row[11]),
        durability=row[12],
        states=tuple(signals["states"]),
        inputs=tuple(signals["inputs"]),
        params=tuple(signals["params"]),
        period_s=float(row[14]),
        steps=int(row[15]),
    )


def has_event(conn: sqlite3.Connection, kind: str) -> bool:
    """Whether the record holds an event of this kind."""
    return conn.execute("SELECT 1 FROM events WHERE kind = ? LIMIT 1", (kind,)).fetchone() is not None


def last_read_time_s(conn: sqlite3.Connection) -> float | None:
    """The plant time of the last recorded read (the last ``reads`` entry of :func:`load_history`), or None."""
    row = conn.execute("SELECT read_t_s FROM samples ORDER BY rec DESC LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def load_history(conn: sqlite3.Connection) -> MemoryRecord:
    """The loop's history as recorded, in the shape :class:`MemoryRecord` keeps it.

    Reads are grouped by step; estimates carry ``x_std = sqrt(x_var)``; controller steps carry ``u``,
    status, compute time and fallback (not the plan, which is not recorded).
    """
    out = MemoryRecord()
    current: tuple[int, float] | None = None
    values: dict[str, Reading] = {}
    for step, read_t, device, value, sample_t, sample_seq in conn.execute(
        "SELECT step, read_t_s, device, value, sample_t_s, sample_seq FROM samples ORDER BY rec"
    ):
        if current is not None and (step, read_t) != current:
            out.reads.append((current[0], Measurements(current[1], values)))
            values = {}
        current = (step, read_t)
        values[device] = Reading(value, sample_t, sample_seq)
    if current is not None:
        out.reads.append((current[0], Measurements(current[1], values)))
    for step, t_s, x, x_var, p, rejected in conn.execute(
        "SELECT step, t_s, x, x_var, p, rejected FROM estimates ORDER BY rec"
    ):
        std = np.sqrt(decode_vector(x_var))
        out.estimates.append(
            (step, Estimate(t_s, decode_vector(x), decode_vector(p), std, tuple(filter(None, rejected.split(",")))))
        )
    for step, t_s, u, status, compute_s, fallback in conn.execute(
        "SELECT step, t_s, u, status, compute_s, fallback FROM controls ORDER BY rec"
    ):
        out.controls.append((step, t_s, ControlStep(decode_vector(u), status, compute_s, fallback)))
    for step, seq, t_s, state, setpoints, reply in conn.execute(
        "SELECT step, seq, t_s, state, setpoints, reply FROM setpoints ORDER BY rec"
    ):
        error = json.loads(reply).get("error") if state == "refused" and reply else None
        sp_state: SetpointState = state
        out.setpoints.append(SetpointRow(step, seq, t_s, sp_state, json.loads(setpoints), error))
    for t_s, kind, message in conn.execute("SELECT t_s, kind, message FROM events ORDER BY rec"):
        out.events.append(EventRow(t_s, kind, message))
    return out
