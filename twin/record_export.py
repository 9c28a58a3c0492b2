"""Export a batch record: one file per table (Parquet via pyarrow, or CSV), for data scientists.

Vectors stored as float64 blobs become one column per name (``x_X_s``, ``x_var_X_s``, ``p_mu_m``,
``u_inp``); setpoint messages get one ``sp_<input>`` column per input; hashes are hex. Every row keeps
its ``rec`` (the record's global order) so tables can be interleaved again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from plant_models.errors import ScenarioError
from twin.batch_record import TABLES, decode_vector
from twin.record_read import open_readonly, read_run
from twin.record_verify import verify_record

__all__ = ["ExportFormat", "export_record", "record_tables"]

ExportFormat = Literal["parquet", "csv"]


def _expand_vectors(names: dict[str, tuple[str, ...]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def expand(row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for column, value in row.items():
            if column in names and isinstance(value, bytes):
                for name, v in zip(names[column], decode_vector(value), strict=True):
                    out[f"{column}_{name}"] = float(v)
            elif isinstance(value, bytes):
                out[column] = value.hex()
            else:
                out[column] = value
        return out

    return expand


def record_tables(path: Path) -> dict[str, pa.Table]:
    """Every table of the record as an Arrow table (vectors expanded into named columns)."""
    with open_readonly(path) as conn:
        run = read_run(conn)
        vectors = {"x": run.states, "x_var": run.states, "p": run.params, "u": run.inputs}
        expand = _expand_vectors(vectors)
        tables = {}
        for table, columns in TABLES.items():
            names = ["rec", *(n for n, _, _ in columns), "hash"]
            rows = [expand(dict(zip(names, r, strict=True))) for r in conn.execute(
                f"SELECT {', '.join(names)} FROM {table} ORDER BY rec"
            )]
            if table == "setpoints":
                for row in rows:
                    for name, value in json.loads(row["setpoints"]).items():
                        row[f"sp_{name}"] = float(value)
            if table == "samples":
                for row in rows:
                    row["value"] = None if row["value"] is None else float(row["value"])
            if rows:
                tables[table] = pa.Table.from_pylist(rows)
            else:
                tables[table] = pa.table({n: pa.array([], type=pa.null()) for n in names})
        return tables


def export_record(path: Path, out_dir: Path, fmt: ExportFormat) -> list[tuple[str, Path, int]]:
    """Write ``out_dir/<table>.<fmt>`` for every table of the record at ``path``.

    The record is verified first: a broken record is not exported as if it were sound.

    Returns:
        (table, file, rows) for each file written.

    Raises:
        ScenarioError: unknown format, or the record does not verify.
    """
    if fmt not in ("parquet", "csv"):
        raise ScenarioError(f"--format must be parquet or csv, not {fmt!r}")
    check = verify_record(path)
    if not check.ok:
        raise ScenarioError(f"{path}: {check.problem}; run `bioimp record verify` — nothing exported")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table, data in record_tables(path).items():
        file = out_dir / f"{table}.{fmt}"
        if fmt == "parquet":
            pq.write_table(data, file)
        else:
            pa_csv.write_csv(data, file)
        written.append((table, file, data.num_rows))
    return written
