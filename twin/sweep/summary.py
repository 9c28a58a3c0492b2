"""Per-setting statistics of a sweep's cases, and the Pareto front of KPI against violation risk.

For each setting, over its cases that finished ``ok``: the mean, standard deviation, P5 and P95 of the
main KPI (numpy's default linear-interpolation percentiles), and the violation probability — the
fraction of its plants on which a true state left its bounds by more than the sweep's tolerance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

__all__ = ["pareto_front", "summarize", "write_summary"]


def summarize(cases: pa.Table) -> pa.Table:
    """One row per setting (in setting order) from the cases table (``cases.parquet``)."""
    cols = cases.to_pydict()
    n = cases.num_rows
    out: list[dict[str, Any]] = []
    for index in sorted(set(cols["setting_index"])):
        rows = [i for i in range(n) if cols["setting_index"][i] == index]
        ok = [i for i in rows if cols["status"][i] == "ok"]
        kpi = np.array([cols["kpi"][i] for i in ok], dtype=float) if "kpi" in cols else np.array([])
        violated = np.array([cols["violated"][i] for i in ok], dtype=bool) if "violated" in cols else np.array([])
        out.append(
            {
                "setting_index": index,
                "setting": cols["setting"][rows[0]],
                "settings": cols["settings"][rows[0]],
                "cases": len(rows),
                "ok": len(ok),
                "errors": len(rows) - len(ok),
                "kpi_mean": float(np.mean(kpi)) if kpi.size else None,
                "kpi_std": float(np.std(kpi, ddof=1)) if kpi.size > 1 else None,
                "kpi_p5": float(np.percentile(kpi, 5)) if kpi.size else None,
                "kpi_p95": float(np.percentile(kpi, 95)) if kpi.size else None,
                "violation_probability": float(np.mean(violated)) if violated.size else None,
            }
        )
    return pa.Table.from_pylist(out)


def pareto_front(summary: pa.Table, direction: str) -> list[int]:
    """Setting indices not dominated in (mean KPI, violation probability): better KPI or lower risk."""
    data = [
        (r["setting_index"], r["kpi_mean"] if direction == "max" else -r["kpi_mean"], r["violation_probability"])
        for r in summary.to_pylist()
        if r["kpi_mean"] is not None
    ]
    front = []
    for idx, kpi, risk in data:
        dominated = any(k >= kpi and r <= risk and (k > kpi or r < risk) for _, k, r in data)
        if not dominated:
            front.append(idx)
    return front


def write_summary(path: Path, summary: pa.Table) -> None:
    """``summary.csv`` (or ``.parquet`` by the suffix), written via a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(summary, tmp)
    else:
        pacsv.write_csv(summary, tmp)
    tmp.replace(path)
