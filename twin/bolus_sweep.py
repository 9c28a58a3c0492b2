"""The daily-bolus baseline's glucose target: the best of a sweep, not a straw man.

``python -m twin.bolus_sweep SCENARIO [--targets 2,4,...] [--out FILE]`` runs the scenario's plant (same
seed) under the daily bolus for each glucose target and prints the harvest of each; the scenario's
``[cascade.bolus] glucose_target`` should be the best one (docs/results.md records the sweep).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

from twin.compare import ControllerScore, run_one
from twin.scenario import Scenario, load_scenario

__all__ = ["sweep"]

DEFAULT_TARGETS = (2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0)


def sweep(scenario: Scenario, targets: tuple[float, ...]) -> list[tuple[float, ControllerScore]]:
    """The bolus baseline's score for each glucose target (mM)."""
    assert scenario.cascade is not None
    out = []
    for target in targets:
        sc = replace(scenario, cascade=replace(scenario.cascade, bolus_target=target))
        out.append((target, run_one(sc, "bolus")))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the sweep, print a table, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m twin.bolus_sweep", description=__doc__)
    parser.add_argument("scenario")
    parser.add_argument("--targets", default=",".join(f"{t:g}" for t in DEFAULT_TARGETS))
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args(argv)
    scenario = load_scenario(args.scenario)
    results = sweep(scenario, tuple(float(t) for t in args.targets.split(",")))
    print(f"{'target mM':>9} {'harvest mg':>10} {'max Lac':>8} {'hard viol':>9} {'Glc band':>8} {'feed L':>7}")
    for target, s in results:
        glc = sum(v for k, v in s.violations.items() if k.startswith("Glc "))
        row = f"{target:9.1f} {s.harvested_mg:10.1f} {s.max_lactate_mM:8.2f} {s.hard_violations:9d} {glc:8d}"
        print(f"{row} {s.feed_l:7.3f}")
    best = max(results, key=lambda r: r[1].harvested_mg)
    print(f"best      {best[0]:g} mM: {best[1].harvested_mg:.1f} mg")
    if args.out:
        doc = {"scenario": scenario.name, "results": [{"target_mM": t, **asdict(s)} for t, s in results]}
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
