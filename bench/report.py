"""Print the benchmark report (``bench/report.json``) as a table of figures against their budgets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.budgets import BUDGETS


def _figure(value: object) -> str:
    """A number to 4 significant digits; a list (per-round figures) as its numbers."""
    if isinstance(value, list):
        return "[" + " ".join(_figure(v) for v in value) + "]"
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def main(path: str = "bench/report.json") -> int:
    """Print one line per benchmark: median, p99, and the budgeted figure with its limit."""
    report = json.loads(Path(path).read_text())
    print(f"{'benchmark':40s} {'p50 ms':>9s} {'p99 ms':>9s}  extra")
    for bench in report["benchmarks"]:
        info = bench.get("extra_info", {})
        extras = ", ".join(f"{k}={_figure(v)}" for k, v in info.items() if k not in ("p50_ms", "p99_ms"))
        print(f"{bench['fullname'].split('::')[-1]:40s} {info.get('p50_ms', float('nan')):9.3f} "
              f"{info.get('p99_ms', float('nan')):9.3f}  {extras}")
    print("\nbudgets:")
    for name, budget in BUDGETS.items():
        print(f"  {name:34s} <= {budget.limit:g} {budget.unit}  ({budget.why})")
    machine = report.get("machine_info", {})
    print(f"\nmachine: {machine.get('cpu', {}).get('brand_raw', '?')}, python {machine.get('python_version', '?')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
