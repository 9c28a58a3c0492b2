"""The durable batch record: one SQLite file per batch, append-only, every row hash-chained.

:class:`BatchRecord` implements :class:`twin.record.Recorder`. The loop never acts on something that
is not on disk yet: a ``read`` reply is committed before the estimator sees it, a setpoint is committed
as ``intended`` before it is sent, and a refusal is committed before the clock moves on. Estimates and
controller steps (computations, nothing acted on) are staged and committed with the next row; so is an
``applied`` ack with ``normal`` durability (see :meth:`BatchRecord.setpoint`: a resume recovers it).

Durability follows the plant's clock (:class:`RecordConfig`): ``full`` (``synchronous=FULL``, one fsync
per commit: survives power loss) against a real-time plant, ``normal`` (WAL with ``synchronous=NORMAL``:
survives a killed process, the OS may lose the last commits on power loss) for accelerated runs.

Append-only: triggers refuse every UPDATE and DELETE of a recorded row. Every row carries ``rec``, its
position in one sequence shared by all tables (1, 2, 3, ...), and ``hash`` = sha256(previous row's hash
‖ canonical JSON of this row), the first row chained to 32 zero bytes. :mod:`twin.record_verify`
recomputes the chain. The schema, the canonical form and the resume semantics are in docs/record.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from plant_models.errors import BioimpError
from twin.interfaces import ControlStep, Estimate, FloatArray, Measurements
from twin.record import EventRow, SetpointRow

__all__ = [
    "GENESIS",
    "RECORD_FILE",
    "TABLES",
    "BatchRecord",
    "Durability",
    "RecordConfig",
    "RecordError",
    "RunMeta",
    "canonical",
    "decode_vector",
    "encode_vector",
    "row_hash",
]

RECORD_FILE = "record.sqlite"
GENESIS = bytes(32)
SCHEMA_VERSION = 1
Durability = Literal["full", "normal"]
ColumnKind = Literal["int", "real", "text", "blob"]


class RecordError(BioimpError, RuntimeError):
    """A batch record cannot be created, opened or continued (the message says why)."""


# Every chained table: its columns in canonical order (rec and hash are implicit). The order here is the
# order in the canonical JSON; changing it changes every hash, so it is part of the record's format.
TABLES: dict[str, tuple[tuple[str, ColumnKind, bool], ...]] = {
    # (name, kind, nullable)
    "run": (
        ("wall_s", "real", False),
        ("started_utc", "text", False),
        ("operator", "text", False),
        ("scenario_name", "text", False),
        ("scenario_sha256", "text", False),
        ("scenario_source", "text", False),
        ("software", "text", False),
        ("model", "text", False),
        ("controller", "text", False),
        ("plant_endpoint", "text", False),
        ("plant_client_id", "text", False),
        ("plant_hello", "text", False),
        ("durability", "text", False),
        ("signals", "text", False),
        ("period_s", "real", False),
        ("steps", "int", False),
    ),
    "samples": (
        ("wall_s", "real", False),
        ("step", "int", False),
        ("read_t_s", "real", False),
        ("device", "text", False),
        ("value", "real", True),
        ("sample_t_s", "real", False),
        ("sample_seq", "int", False),
        ("quality", "text", False),
    ),
    "estimates": (
        ("wall_s", "real", False),
        ("step", "int", False),
        ("t_s", "real", False),
        ("x", "blob", False),
        ("x_var", "blob", False),
        ("p", "blob", False),
        ("rejected", "text", False),
    ),
    "controls": (
        ("wall_s", "real", False),
        ("step", "int", False),
        ("t_s", "real", False),
        ("u", "blob", False),
        ("status", "text", False),
        ("compute_s", "real", False),
        ("fallback", "text", True),
    ),
    "setpoints": (
        ("wall_s", "real", False),
        ("step", "int", False),
        ("seq", "int", False),
        ("t_s", "real", False),
        ("state", "text", False),
        ("setpoints", "text", False),
        ("reply", "text", True),
    ),
    "events": (
        ("wall_s", "real", False),
        ("t_s", "real", True),  # NULL when plant time is unknown (the plant did not answer)
        ("kind", "text", False),
        ("message", "text", False),
    ),
    "audit": (
        ("wall_s", "real", False),
        ("who", "text", False),
        ("what", "text", False),
        ("why", "text", False),
        ("old", "text", True),
        ("new", "text", True),
        ("ref_rec", "int", True),
    ),
}

_SQL_TYPE = {"int": "INTEGER", "real": "REAL", "text": "TEXT", "blob": "BLOB"}
_INSERT = {
    table: f"INSERT INTO {table} (rec, {', '.join(n for n, _, _ in cols)}, hash) "
    f"VALUES ({', '.join('?' for _ in range(len(cols) + 2))})"
    for table, cols in TABLES.items()
}


def _schema() -> list[str]:
    ddl = []
    for table, columns in TABLES.items():
        cols = ", ".join(f"{n} {_SQL_TYPE[k]}{'' if null else ' NOT NULL'}" for n, k, null in columns)
        ddl.append(f"CREATE TABLE {table} (rec INTEGER PRIMARY KEY, {cols}, hash BLOB NOT NULL)")
        for op in ("UPDATE", "DELETE"):
            ddl.append(
                f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'batch record is append-only: {op} on {table} refused'); END"
            )
    ddl += [
        # No secondary indexes: rows arrive in step order (rec order), and every index is one more page
        # written per commit. Readers scan or filter.
        # Not part of the record: the estimator's and controller's state after the last two steps, so a
        # resumed run warm-starts exactly where the killed one was. Replaced as the run goes on.
        # Two slots (step % 2), overwritten in turn.
        "CREATE TABLE resume_state (slot INTEGER PRIMARY KEY, step INTEGER NOT NULL, state BLOB NOT NULL)",
        f"PRAGMA user_version = {SCHEMA_VERSION}",
    ]
    return ddl


def encode_vector(x: FloatArray | Sequence[float]) -> bytes:
    """A float vector as little-endian float64 bytes (exact, 8 bytes per value)."""
    return np.asarray(x, dtype="<f8").tobytes()


def decode_vector(blob: bytes) -> FloatArray:
    """The inverse of :func:`encode_vector`."""
    return np.frombuffer(blob, dtype="<f8").astype(np.float64)


def _normalise(kind: ColumnKind, value: Any) -> Any:
    """The value exactly as SQLite will give it back (so the hash of a read-back row is the same)."""
    if value is None:
        return None
    if kind == "real":
        value = float(value)
        return value if math.isfinite(value) else None  # SQLite stores NaN as NULL
    if kind == "int":
        return int(value)
    if kind == "text":
        return str(value)
    return bytes(value)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def canonical(table: str, rec: int, values: Sequence[Any]) -> bytes:
    """The canonical bytes of one row: compact JSON ``[table, rec, v1, v2, ...]`` in column order.

    Floats are written by ``repr`` (shortest exact round trip), blobs as lowercase hex, NULL as null.
    """
    items: list[Any] = [table, rec]
    for value in values:
        items.append(value.hex() if isinstance(value, bytes) else value)
    return _ENCODER.encode(items).encode("ascii")


def row_hash(prev: bytes, table: str, rec: int, values: Sequence[Any]) -> bytes:
    """sha256(previous hash ‖ canonical row)."""
    return hashlib.sha256(prev + canonical(table, rec, values)).digest()


@dataclass(frozen=True)
class RecordConfig:
    """How the record is written.

    Attributes:
        durability: ``full`` (fsync every commit; real-time plants) or ``normal`` (accelerated runs).
        period_s: the loop period; a read more than ``gap_factor`` periods after the previous one is
            recorded as a ``gap`` event.
        gap_factor: see ``period_s``.
    """

    durability: Durability = "normal"
    period_s: float | None = None
    gap_factor: float = 1.5

    def __post_init__(self) -> None:
        if self.durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', not {self.durability!r}")


@dataclass(frozen=True)
class RunMeta:
    """What identifies a batch: written once, as the first row of the record."""

    operator: str
    scenario_name: str
    scenario_sha256: str
    scenario_source: str
    software: Mapping[str, str]
    model: str
    controller: str
    plant_endpoint: str
    plant_client_id: str
    plant_hello: Mapping[str, Any]
    states: tuple[str, ...]
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    period_s: float
    steps: int


def _connect(path: Path, durability: Durability) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
    # Copy the WAL into the database every 4000 pages (16 MB) instead of SQLite's 1000: each copy is
    # two fsyncs, and the resume state rewritten at every step would otherwise trigger one every few
    # dozen steps. The WAL is copied and removed when the record is closed.
    conn.execute("PRAGMA wal_autocheckpoint=4000")
    return conn


def has_run(path: Path) -> bool:
    """Whether ``path`` holds a committed batch record (a killed creation leaves none)."""
    if not path.exists():
        return False
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        found = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='run'").fetchone()
        return found is not None and conn.execute("SELECT 1 FROM run LIMIT 1").fetchone() is not None
    except sqlite3.DatabaseError as exc:
        raise RecordError(f"{path}: not a batch record ({exc}); it is left as it is") from None
    finally:
        conn.close()


class BatchRecord:
    """The append-only SQLite record of one batch. Create with :meth:`create`, reopen with :meth:`open`.

    Also a :class:`twin.record.Recorder`. Not thread-safe: one writer (the loop's thread).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, config: RecordConfig, last_rec: int, last_hash: bytes):
        """Use :meth:`create` or :meth:`open`."""
        self._conn = conn
        self.path = path
        self.config = config
        self._rec = last_rec
        self._hash = last_hash
        self._last_read_t: float | None = None
        self._last_sample_seq: dict[str, int] = {}
        self._checkpoint: Callable[[], bytes] | None = None
        # Rows computed but not yet acted on (estimate, controller step): committed with the next row.
        self._staged: list[tuple[str, list[Any]]] = []
        self._staged_state: tuple[int, bytes] | None = None

    # ----------------------------------------------------------------------------------------------
    # Opening

    @classmethod
    def create(cls, path: Path, meta: RunMeta, config: RecordConfig) -> BatchRecord:
        """Create the record file with its schema and run row, in one transaction.

        Raises:
            RecordError: ``path`` already holds a batch record (a record is never overwritten).
        """
        if has_run(path):
            raise RecordError(f"{path} already holds a batch record; continue it with --resume or choose another --out")
        for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)  # an interrupted creation committed nothing
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(path, config.durability)
        record = cls(conn, path, config, 0, GENESIS)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _schema():
                conn.execute(statement)
            signals = {"states": list(meta.states), "inputs": list(meta.inputs), "params": list(meta.params)}
            record._append(
                "run",
                [
                    time.time(),
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    meta.operator,
                    meta.scenario_name,
                    meta.scenario_sha256,
                    meta.scenario_source,
                    json.dumps(dict(meta.software), sort_keys=True),
                    meta.model,
                    meta.controller,
                    meta.plant_endpoint,
                    meta.plant_client_id,
                    json.dumps(dict(meta.plant_hello), sort_keys=True),
                    config.durability,
                    json.dumps(signals),
                    meta.period_s,
                    meta.steps,
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        return record

    @classmethod
    def open(cls, path: Path, config: RecordConfig | None = None) -> BatchRecord:
        """Reopen a record to continue it (resume). SQLite drops a transaction that was cut off.

        Args:
            path: the record file.
            config: how to go on writing; the run row's durability when None.

        Raises:
            RecordError: no committed batch record at ``path``.
        """
        if not has_run(path):
            raise RecordError(f"{path}: no batch record to continue (nothing was committed)")
        if config is None:
            ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                query = "SELECT durability, period_s FROM run ORDER BY rec LIMIT 1"
                durability, period_s = ro.execute(query).fetchone()
            finally:
                ro.close()
            config = RecordConfig(durability=durability, period_s=period_s)
        conn = _connect(path, config.durability)
        union = " UNION ALL ".join(f"SELECT rec, hash FROM {t}" for t in TABLES)
        last = conn.execute(f"SELECT rec, hash FROM ({union}) ORDER BY rec DESC LIMIT 1").fetchone()
        record = cls(conn, path, config, int(last[0]), bytes(last[1]))
        row = conn.execute("SELECT MAX(read_t_s) FROM samples").fetchone()
        record._last_read_t = None if row[0] is None else float(row[0])
        for device, seq in conn.execute("SELECT device, MAX(sample_seq) FROM samples GROUP BY device"):
            record._last_sample_seq[device] = int(seq)
        return record

    @property
    def connection(self) -> sqlite3.Connection:
        """The open connection (for readers in this process)."""
        return self._conn

    @property
    def last_rec(self) -> int:
        """The ``rec`` of the last committed row."""
        return self._rec

    @property
    def head(self) -> bytes:
        """The hash of the last committed row (keep it elsewhere to detect a truncated tail)."""
        return self._hash

    def set_checkpoint(self, snapshot: Callable[[], bytes] | None) -> None:
        """Store ``snapshot()`` (estimator and controller state) with every controller step, atomically."""
        self._checkpoint = snapshot

    def close(self) -> None:
        """Commit any staged rows and close the file (a WAL checkpoint happens if this is the last
        connection). Idempotent."""
        if self._staged:
            self._transaction(lambda: None)
        self._conn.close()

    # ----------------------------------------------------------------------------------------------
    # Writing

    def _append(self, table: str, values: list[Any]) -> int:
        columns = TABLES[table]
        if len(values) != len(columns):
            raise AssertionError(f"{table}: {len(values)} values for {len(columns)} columns")
        norm = [_normalise(kind, v) for (_, kind, _), v in zip(columns, values, strict=True)]
        rec = self._rec + 1
        digest = row_hash(self._hash, table, rec, norm)
        self._conn.execute(_INSERT[table], [rec, *norm, digest])
        self._rec, self._hash = rec, digest
        return rec

    def _append_many(self, table: str, rows: list[list[Any]]) -> None:
        columns = TABLES[table]
        params = []
        rec, digest = self._rec, self._hash
        for values in rows:
            norm = [_normalise(kind, v) for (_, kind, _), v in zip(columns, values, strict=True)]
            rec += 1
            digest = row_hash(digest, table, rec, norm)
            params.append([rec, *norm, digest])
        self._conn.executemany(_INSERT[table], params)
        self._rec, self._hash = rec, digest

    def _transaction(self, write: Callable[[], object]) -> None:
        """Commit the staged rows and ``write``'s rows as one transaction; on failure nothing changes."""
        rec, digest = self._rec, self._hash
        staged, state = self._staged, self._staged_state
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for table, values in staged:
                self._append(table, values)
            if state is not None:
                self._conn.execute(
                    "INSERT OR REPLACE INTO resume_state (slot, step, state) VALUES (?, ?, ?)",
                    (state[0] % 2, state[0], state[1]),
                )
            self._staged, self._staged_state = [], None
            write()
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            self._rec, self._hash = rec, digest
            self._staged, self._staged_state = staged, state
            raise

    def measurements(self, step: int, meas: Measurements) -> None:
        """Commit every reading of a ``read`` reply (and a ``gap`` event after a missed period)."""
        wall = time.time()
        gap = self._gap(meas.time_s)

        def write() -> None:
            if gap is not None:
                self._append("events", [wall, meas.time_s, "gap", gap])
            rows = []
            for device, reading in meas.values.items():
                value = reading.value
                if value is None:
                    quality = "missing"
                elif not math.isfinite(value):
                    quality = "not_finite"
                elif reading.seq <= self._last_sample_seq.get(device, -1):
                    quality = "stale"  # the same sample as the previous read: no new measurement
                else:
                    quality = "good"
                rows.append([wall, step, meas.time_s, device, value, reading.t_s, reading.seq, quality])
            self._append_many("samples", rows)

        self._transaction(write)
        self._last_read_t = meas.time_s
        for device, reading in meas.values.items():
            self._last_sample_seq[device] = max(reading.seq, self._last_sample_seq.get(device, -1))

    def _gap(self, t_s: float) -> str | None:
        period = self.config.period_s
        if period is None or self._last_read_t is None:
            return None
        elapsed = t_s - self._last_read_t
        if elapsed > self.config.gap_factor * period:
            return f"no measurement for {elapsed:g} s (t={self._last_read_t:g} s to {t_s:g} s), period {period:g} s"
        return None

    def estimate(self, step: int, est: Estimate) -> None:
        """Record an estimate: state, covariance diagonal (std²), parameters, rejected readings.

        Staged, not committed yet: it is committed with the next row (the controller's intended setpoint
        or an event), before anything leaves the controller. A process killed in between loses only a
        computation, which a resumed run repeats from the committed measurements.
        """
        values = [
            time.time(),
            step,
            est.t_s,
            encode_vector(est.x),
            encode_vector(np.square(est.x_std)),
            encode_vector(est.p),
            ",".join(est.rejected),
        ]
        self._staged.append(("estimates", values))

    def control(self, step: int, t_s: float, result: ControlStep) -> None:
        """Record a controller step, with the resume checkpoint; staged like :meth:`estimate` and
        committed with the ``intended`` setpoint that follows it, in one transaction."""
        values = [time.time(), step, t_s, encode_vector(result.u), result.status, result.compute_s, result.fallback]
        self._staged.append(("controls", values))
        if self._checkpoint is not None:
            self._staged_state = (step, self._checkpoint())

    def setpoint(self, row: SetpointRow) -> None:
        """Commit a setpoint message as intended, applied (with the plant's reply) or refused.

        ``intended`` and ``refused`` are committed at once. With ``normal`` durability (accelerated runs)
        an ``applied`` ack is committed with the next row (the next read), one transaction per step
        fewer: an ack lost with a killed process is recovered by resending its seq, which the plant
        answers with the same reply (:mod:`twin.resume`). With ``full`` durability it is committed at once.
        """
        if row.state == "intended":
            reply = None
        elif row.state == "applied":
            reply = json.dumps({"time": row.t_s, "applied": dict(row.values)}, sort_keys=True)
        else:
            reply = json.dumps({"error": row.error}, sort_keys=True)
        values = [time.time(), row.step, row.seq, row.t_s, row.state, json.dumps(dict(row.values)), reply]
        if row.state == "applied" and self.config.durability == "normal":
            self._staged.append(("setpoints", values))
        else:
            self._transaction(lambda: self._append("setpoints", values))

    def event(self, row: EventRow) -> None:
        """Commit an event or alarm."""
        self._transaction(lambda: self._append("events", [time.time(), row.t_s, row.kind, row.message]))

    def audit(
        self, *, who: str, what: str, why: str, old: str | None, new: str | None, ref_rec: int | None = None
    ) -> int:
        """Commit a change: who changed what, why, from which value to which (when is the row's wall time).

        A correction of an earlier row names it by ``ref_rec``; the earlier row itself is never changed.

        Returns:
            The ``rec`` of the audit row.
        """
        if not who.strip() or not why.strip():
            raise RecordError("an audit entry needs who and why")
        out: list[int] = []
        self._transaction(lambda: out.append(self._append("audit", [time.time(), who, what, why, old, new, ref_rec])))
        return out[0]
