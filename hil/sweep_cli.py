"""``bioimp sweep``: an offline tuning study over settings and Monte Carlo plants (twin.sweep)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from plant_models.errors import ScenarioError

if TYPE_CHECKING:
    from twin.interfaces import Plant
    from twin.simulated_plant import SimulatedPlant

__all__ = ["add_sweep_parser", "in_process"]


def in_process(sim: SimulatedPlant) -> Plant:
    """A sweep case's plant: wire protocol v1's handler called in this process (no sockets).

    Module-level so that it travels to pool and Dask workers by reference.
    """
    from hil.handler import ProtocolHandler
    from hil.inprocess import InProcessPlant

    return InProcessPlant(ProtocolHandler(sim))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _cmd_sweep(args: argparse.Namespace) -> int:
    from twin.sweep.config import load_sweep
    from twin.sweep.execute import CaseRunner, DaskRunner, LocalPoolRunner, default_workers
    from twin.sweep.run import run_sweep

    if args.best is not None:
        from twin.sweep.best import choose_best

        if args.sweep is not None:
            raise ScenarioError("--best: give the results directory only, not a sweep file")
        print(choose_best(Path(args.best), args.max_risk).describe())
        return 0
    if args.sweep is None:
        raise ScenarioError("sweep: a sweep file is required (or --best DIR)")
    config = load_sweep(args.sweep)
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / config.name
    if args.scheduler is not None and not args.scheduler.startswith(("tcp://", "tls://", "inproc://")):
        raise ScenarioError(f"--scheduler: expected tcp://HOST:PORT, got {args.scheduler!r}")
    runner: CaseRunner = (
        DaskRunner(args.scheduler) if args.scheduler else LocalPoolRunner(args.workers or default_workers())
    )
    try:
        with runner:
            result = run_sweep(config, out, runner, in_process)
    except KeyboardInterrupt:
        print(
            f"bioimp: sweep interrupted; finished cases are in {out} (run the same command to resume)", file=sys.stderr
        )
        return 130
    print(
        f"{out}: {result.cases.num_rows} cases ({result.ran} run now, {result.skipped} already done, "
        f"{result.failed} failed, {result.lost} lost) -> cases.parquet, summary.csv, kpi_distribution.png, pareto.png"
    )
    return 1 if result.lost else 0


def add_sweep_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bioimp sweep``."""
    sweep = sub.add_parser("sweep", help="tuning study: closed-loop batches over settings x Monte Carlo plants")
    sweep.add_argument("sweep", nargs="?", help="sweep TOML (docs/sweeps.md)")
    where = sweep.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive, metavar="N", help="local worker processes (default: cores)")
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run the cases on this Dask scheduler")
    sweep.add_argument(
        "--out",
        metavar="DIR",
        help="results directory (default: runs/sweeps/<sweep name>); re-running with the same DIR resumes",
    )
    sweep.add_argument(
        "--best", metavar="DIR", help="print the best setting of a finished sweep and write it as DIR/best.toml"
    )
    sweep.add_argument(
        "--max-risk",
        type=float,
        default=0.05,
        metavar="P",
        help="--best: only settings with violation probability <= P (default 0.05)",
    )
    sweep.set_defaults(func=_cmd_sweep)
