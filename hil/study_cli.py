"""Offline study commands: ``bioimp optimize`` and ``bioimp compare``.

Registered in :func:`hil.cli.build_parser` by :func:`add_study_parsers`. Errors are
:class:`~plant_models.errors.BioimpError` subclasses: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from plant_models.errors import ScenarioError

__all__ = ["add_study_parsers"]


def _cmd_optimize(args: argparse.Namespace) -> int:
    from twin.optimize import optimize_scenario, write_optimize
    from twin.scenario import load_scenario

    if args.intervals is not None and args.intervals < 1:
        raise ScenarioError(f"--intervals: must be >= 1, got {args.intervals}")
    scenario = load_scenario(args.scenario)
    result = optimize_scenario(scenario, args.intervals)
    csv_path, json_path = write_optimize(Path(args.out), scenario, result)
    sol = result.solution
    print(f"model     {result.spec.name} ({len(sol.u)} intervals)")
    print(f"status    {sol.status} after {sol.iterations} iterations ({sol.compute_s:.2f} s)")
    print(f"objective {sol.objective:.6g}")
    print(f"wrote     {csv_path}, {json_path}")
    return 0 if sol.status == "ok" else 1


def _cmd_compare(args: argparse.Namespace) -> int:
    from twin.compare import compare, format_table, parse_controllers, write_compare
    from twin.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    scores = compare(scenario, parse_controllers(args.controllers))
    print(format_table(scores))
    if args.out:
        path = Path(args.out) / "compare.json"
        write_compare(path, scenario, scores)
        print(f"wrote     {path}")
    return 0


def add_study_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``optimize`` and ``compare``."""
    opt = sub.add_parser("optimize", help="offline optimal input profile over the whole batch (nominal model)")
    opt.add_argument("scenario", help="scenario TOML")
    opt.add_argument("--intervals", type=int, help="piecewise-constant input intervals (default: the scenario's)")
    opt.add_argument("--out", required=True, help="directory for profile.csv and optimize.json")
    opt.set_defaults(func=_cmd_optimize)

    cmp_ = sub.add_parser("compare", help="the same plant (same seed) under each controller")
    cmp_.add_argument("scenario", help="scenario TOML with a [cascade] table")
    cmp_.add_argument(
        "--controllers", default="nmpc,bolus,openloop,oracle", help="comma-separated: nmpc, bolus, openloop, oracle"
    )
    cmp_.add_argument("--out", help="directory for compare.json")
    cmp_.set_defaults(func=_cmd_compare)
