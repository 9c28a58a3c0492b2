"""The sweep's results directory: one file per finished case, then one table.

Each finished case is written as ``DIR/cases/<key>.json`` through a temporary file and an atomic
rename, so a killed or interrupted sweep leaves only complete case files behind; the set of those
files is what is done. ``DIR/cases.parquet`` is rebuilt from them (again via a temporary file and a
rename) whenever a sweep finishes or is interrupted, ordered by setting and plant whatever order the
cases finished in. Re-running with the same DIR skips every case whose file exists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["CaseStore"]


class CaseStore:
    """Finished cases of one sweep, in ``root``."""

    def __init__(self, root: Path) -> None:
        """Open (and create) the results directory; stale temporary files of a killed run are removed."""
        self.root = root
        self.parts = root / "cases"
        self.parts.mkdir(parents=True, exist_ok=True)
        for tmp in [*self.parts.glob("*.tmp"), *root.glob("*.tmp")]:
            tmp.unlink()

    def done(self) -> set[str]:
        """Keys of the cases already finished (ok or error)."""
        return {p.stem for p in self.parts.glob("*.json")}

    def add(self, row: Mapping[str, Any]) -> None:
        """Record one finished case, atomically (a reader sees the whole row or nothing)."""
        path = self.parts / f"{row['case_key']}.json"
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as f:
                json.dump(row, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:  # interrupted (Ctrl-C) before the rename: the case is not recorded, and leaves no trace
            tmp.unlink(missing_ok=True)

    def rows(self, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The finished rows (of ``keys`` only, when given), ordered by setting and plant."""
        wanted = None if keys is None else set(keys)
        rows = []
        for path in self.parts.glob("*.json"):
            if wanted is None or path.stem in wanted:
                rows.append(json.loads(path.read_text(encoding="utf-8")))
        return sorted(rows, key=lambda r: (r["setting_index"], r["plant"], r["case_key"]))

    def write_table(self, keys: Iterable[str] | None = None) -> pa.Table:
        """Rebuild ``cases.parquet`` from the finished rows (atomically) and return it."""
        rows = self.rows(keys)
        columns: dict[str, None] = {}
        for row in rows:  # union of columns in first-seen order (an error row has no KPI columns)
            columns |= dict.fromkeys(row)
        table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
        tmp = self.root / "cases.parquet.tmp"
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, self.root / "cases.parquet")
        finally:
            tmp.unlink(missing_ok=True)
        return table
