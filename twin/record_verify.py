"""Check a batch record: SQLite's own integrity, the ``rec`` sequence and the hash chain.

The first problem found is reported with the table and ``rec`` of the row (and a short description of
it), so an auditor can look at exactly that row.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twin.batch_record import GENESIS, TABLES, row_hash

__all__ = ["VerifyResult", "verify_record"]

# Columns that help a reader find a row, per table (shown with a broken row).
_LOCATORS = {
    "samples": ("step", "device"),
    "estimates": ("step",),
    "controls": ("step",),
    "setpoints": ("step", "seq", "state"),
    "events": ("kind",),
    "audit": ("what",),
    "run": ("scenario_name",),
}


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify_record`.

    Attributes:
        ok: every check passed.
        rows: rows checked (in ``rec`` order, up to the first problem).
        head: hex hash of the last good row.
        problem: what is wrong ('' when ok).
        table, rec: where the first problem is (None when ok or not row-specific).
    """

    ok: bool
    rows: int
    head: str
    problem: str = ""
    table: str | None = None
    rec: int | None = None


def _rows(conn: sqlite3.Connection, table: str) -> Iterator[tuple[int, str, list[Any], bytes]]:
    names = [n for n, _, _ in TABLES[table]]
    for row in conn.execute(f"SELECT rec, {', '.join(names)}, hash FROM {table} ORDER BY rec"):
        yield int(row[0]), table, list(row[1:-1]), row[-1]


def _describe(table: str, values: list[Any]) -> str:
    names = [n for n, _, _ in TABLES[table]]
    parts = [f"{n}={values[names.index(n)]!r}" for n in _LOCATORS.get(table, ()) if n in names]
    return ", ".join(parts)


def verify_record(path: Path) -> VerifyResult:
    """Verify the record file at ``path``.

    Checks, in order: ``PRAGMA quick_check``; that ``rec`` runs 1, 2, 3, ... over all tables together
    (a deleted or inserted row breaks it); and that each row's hash is sha256(previous hash ‖ canonical
    row) — a changed value, a changed hash or a reordered row breaks it.
    """
    if not path.exists():
        return VerifyResult(False, 0, GENESIS.hex(), f"{path}: no such file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return VerifyResult(False, 0, GENESIS.hex(), f"cannot open: {exc}")
    try:
        return _verify(conn)
    except sqlite3.DatabaseError as exc:
        return VerifyResult(False, 0, GENESIS.hex(), f"SQLite cannot read the file: {exc}")
    finally:
        conn.close()


def _verify(conn: sqlite3.Connection) -> VerifyResult:
    check = [r[0] for r in conn.execute("PRAGMA quick_check")]
    if check != ["ok"]:
        return VerifyResult(False, 0, GENESIS.hex(), "SQLite integrity check failed: " + "; ".join(check[:3]))
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = [t for t in TABLES if t not in present]
    if missing:
        return VerifyResult(False, 0, GENESIS.hex(), f"not a batch record: missing tables {', '.join(missing)}")
    prev = GENESIS
    expected = 1
    merged = heapq.merge(*(_rows(conn, t) for t in TABLES), key=lambda r: r[0])
    for rec, table, values, stored in merged:
        if rec != expected:
            problem = f"row {expected} is missing (next row is {table} rec {rec})" if rec > expected else (
                f"row {rec} appears twice"
            )
            return VerifyResult(False, expected - 1, prev.hex(), problem, table, rec)
        digest = row_hash(prev, table, rec, values)
        if digest != bytes(stored):
            where = _describe(table, values)
            problem = f"{table} rec {rec} ({where}): hash mismatch — the row or the chain before it was altered"
            return VerifyResult(False, expected - 1, prev.hex(), problem, table, rec)
        prev = digest
        expected += 1
    if expected == 1:
        return VerifyResult(False, 0, prev.hex(), "the record holds no rows")
    return VerifyResult(True, expected - 1, prev.hex())
