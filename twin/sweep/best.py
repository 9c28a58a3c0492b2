"""``bioimp sweep --best DIR``: the setting a finished study recommends, as a scenario ready for ``bioimp run``.

The choice: among the settings whose violation probability is at most ``max_risk``, the one with the
best mean KPI (the sweep's ``kpi.direction``); ties go to the lower risk, then to the earlier setting.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from plant_models.errors import ScenarioError
from twin.sweep.cases import scenario_for
from twin.sweep.config import parse_sweep
from twin.sweep.summary import summarize

__all__ = ["Best", "choose_best"]


@dataclass(frozen=True)
class Best:
    """The chosen setting: its summary row and the scenario file written for it."""

    row: dict[str, Any]
    kpi_name: str
    path: Path

    def describe(self) -> str:
        """One line: which setting, its KPI statistics and risk, and where the scenario is."""
        r = self.row
        return (
            f"best: setting #{r['setting_index']} ({r['setting']}): mean {self.kpi_name} {r['kpi_mean']:.6g} "
            f"(P5 {r['kpi_p5']:.6g}, P95 {r['kpi_p95']:.6g}), violation probability {r['violation_probability']:.3g} "
            f"over {r['ok']} plants -> {self.path}"
        )


def choose_best(out_dir: Path, max_risk: float) -> Best:
    """Choose from ``out_dir`` (a sweep's results) and write ``out_dir/best.toml``.

    Raises:
        ScenarioError: not a sweep's results directory, or no setting is within ``max_risk``.
    """
    try:
        sweep_text = (out_dir / "sweep.toml").read_text(encoding="utf-8")
        scenario_text = (out_dir / "scenario.toml").read_text(encoding="utf-8")
        cases = pq.read_table(out_dir / "cases.parquet")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"--best: {out_dir} is not a sweep's results directory ({exc})") from None
    config = parse_sweep(sweep_text, out_dir, str(out_dir / "sweep.toml"), out_dir.name, scenario_text)
    rows = [r for r in summarize(cases).to_pylist() if r["kpi_mean"] is not None]
    allowed = [r for r in rows if r["violation_probability"] <= max_risk]
    if not allowed:
        lowest = min((r["violation_probability"] for r in rows), default=None)
        raise ScenarioError(f"--max-risk: no setting has violation probability <= {max_risk} (lowest: {lowest})")
    sign = 1.0 if config.kpi.direction == "max" else -1.0
    best = min(allowed, key=lambda r: (-sign * r["kpi_mean"], r["violation_probability"], r["setting_index"]))
    base_name = tomllib.loads(scenario_text).get("name", config.name)
    text = scenario_for(config, json.loads(best["settings"]), f"{base_name}-best")
    header = (
        f"# Chosen by `bioimp sweep --best {out_dir}` (sweep {config.name}, max risk {max_risk}):\n"
        f"# setting #{best['setting_index']}: {best['setting']}; the sweep's overrides applied.\n"
    )
    path = out_dir / "best.toml"
    path.write_text(header + text, encoding="utf-8")
    return Best(best, config.kpi.main, path)
